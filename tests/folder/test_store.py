"""An object store as --out: a real S3 server on 127.0.0.1 (moto) through s3fs, and memory:// for the fast
checks. A run there equals a local run byte for byte; a worker killed between a shard's upload and its commit
resumes to the same bytes; workers on separate stages merge in the store; bad locations are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import invoke, same_data, store_files

RUN = dict(recipe="emotions", num_samples=16, model="tiny", quiet=True, rows_per_shard=4, batch_size=12, candidates=1)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    from facesynth.generation import GenerateConfig, generate

    out = tmp_path_factory.mktemp("local") / "demo"
    generate(GenerateConfig(out=out, **RUN))
    return out


@pytest.mark.slow
def test_a_run_into_s3_equals_a_local_run_and_loads_from_there(s3, local_run, tmp_path):
    import facesynth
    from facesynth.generation import GenerateConfig, generate

    url = f"{s3}/emotions/demo"
    result = generate(GenerateConfig(out=url, **RUN))
    assert result.out == url and result.rows == 16 and result.merged
    stored = store_files(url)
    same_data(stored, local_run)
    assert {"README.md", "assets/samples.png", ".facesynth/run.json"} <= set(stored)
    assert str(tmp_path) not in stored["README.md"].decode() and "testing-secret" not in str(stored)
    assert not (tmp_path / "stages").exists() or not any((tmp_path / "stages").iterdir())  # the stage is gone
    happy = facesynth.load(url, split="train", emotion="happy")
    assert set(happy["emotion"]) == {0} and len(happy) == len(facesynth.load(str(local_run), split="train",
                                                                               emotion="happy"))
    assert 'load_dataset("demo")' in stored["README.md"].decode()  # named as the URL names it, not the stage
    again = generate(GenerateConfig(out=url, **RUN))  # the same command again: nothing to make
    now = store_files(url)
    assert again.shards_written == 0 and {n: b for n, b in now.items() if n != "manifest.json"} == {
        n: b for n, b in stored.items() if n != "manifest.json"}
    assert {k: v for k, v in json.loads(now["manifest.json"]).items() if k != "updated"} == {
        k: v for k, v in json.loads(stored["manifest.json"]).items() if k != "updated"}


@pytest.mark.slow
def test_load_dataset_reads_the_stored_parquet(s3, local_run, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # offline mode refuses every URL; the socket
    # guard still lets nothing but 127.0.0.1 through
    from facesynth.generation import GenerateConfig, generate

    url = f"{s3}/demo"
    generate(GenerateConfig(out=url, **RUN))
    stored = datasets.load_dataset("parquet", data_files={"train": f"{url}/data/*/train-*.parquet"})
    local = datasets.load_dataset("parquet", data_files={"train": f"{local_run}/data/*/train-*.parquet"})
    assert stored["train"]["sample_id"] == local["train"]["sample_id"]

    # pyarrow's own S3 client, with a filter pushed down to the row groups
    import os
    from urllib.parse import urlparse

    import pyarrow.dataset as pads
    from pyarrow import fs

    endpoint = urlparse(os.environ["AWS_ENDPOINT_URL"])
    client = fs.S3FileSystem(endpoint_override=endpoint.netloc, scheme=endpoint.scheme, region="us-east-1",
                           access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
    names = sorted(n for n in json.loads(store_files(url)["manifest.json"])["shards"] if "/train-" in n)
    bucket = url.split("://", 1)[1]
    happy = pads.dataset([f"{bucket}/{n}" for n in names], filesystem=client, format="parquet").to_table(
        columns=["sample_id"], filter=pads.field("emotion") == 0)
    want = [sid for sid, e in zip(local["train"]["sample_id"], local["train"]["emotion"]) if e == 0]
    assert sorted(happy["sample_id"].to_pylist()) == sorted(want) and want


KILLED = textwrap.dedent("""\
    import os, sys
    from facesynth.folder import store
    from facesynth.generation import GenerateConfig, generate

    uploads = []
    real = store.Store.upload

    def upload(self, local, name):
        if name.startswith("data/"):
            uploads.append(name)
            if len(uploads) == int(sys.argv[2]) and sys.argv[3] == "before":
                os._exit(9)  # killed as the shard's upload starts: nothing of it in the store
            if len(uploads) == int(sys.argv[2]) and sys.argv[3] == "interrupted":
                raise KeyboardInterrupt  # Ctrl-C as the shard's upload starts: what is up is committed
        real(self, local, name)
        if name.startswith("data/") and len(uploads) == int(sys.argv[2]) and sys.argv[3] == "after":
            os._exit(9)  # killed after the shard's upload, before the manifest that commits it

    store.Store.upload = upload
    generate(GenerateConfig(recipe="emotions", out=sys.argv[1], num_samples=16, model="tiny", quiet=True,
                            rows_per_shard=4, batch_size=12, candidates=1))
""")


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after", "interrupted"])
def test_a_worker_killed_mid_upload_resumes_to_the_same_bytes(s3, local_run, tmp_path, when):
    import facesynth
    from facesynth.errors import OutputError
    from facesynth.generation import GenerateConfig, generate

    url = f"{s3}/killed"
    every = {"FACESYNTH_COMMIT_SECONDS": "0" if when != "interrupted" else "3600"}  # interrupted: the default's way
    done = subprocess.run([sys.executable, "-c", KILLED, url, "3", when], capture_output=True, text=True,
                          env={**os.environ, **every})
    assert done.returncode == (-2 if when == "interrupted" else 9), done.stderr[-2000:]  # -2: ended by SIGINT
    stored = store_files(url)
    listed = json.loads(stored["manifest.json"])["shards"]
    committed = 3 if when == "interrupted" else 2  # a Ctrl-C finishes the upload it cut short, then commits
    assert len(listed) == committed and not json.loads(stored["manifest.json"])["complete"]
    assert len([n for n in stored if n.startswith("data/")]) == (3 if when != "before" else 2)
    with pytest.raises(OutputError, match=f"not complete: its run stopped after {committed} of 12 shards"):
        facesynth.load(url)
    partial = facesynth.load(url, partial=True)
    assert sum(len(d) for d in partial.values()) == sum(r["rows"] for r in listed.values())  # committed rows only
    result = generate(GenerateConfig(out=url, **RUN))
    assert result.shards_skipped == committed
    same_data(store_files(url), local_run)


@pytest.mark.slow
def test_workers_on_their_own_stages_merge_in_the_store(s3, local_run, tmp_path):
    from facesynth.generation import GenerateConfig, generate

    url = f"{s3}/workers"
    first = generate(GenerateConfig(out=url, worker_index=0, num_workers=2, stage=str(tmp_path / "a"), **RUN))
    assert not first.merged and "manifest.json" not in store_files(url)
    second = generate(GenerateConfig(out=url, worker_index=1, num_workers=2, stage=str(tmp_path / "b"), **RUN))
    assert second.merged
    stored = store_files(url)
    same_data(stored, local_run)
    assert json.loads(stored["manifest.json"])["workers"] == 2


@pytest.mark.slow
def test_merge_from_the_store(s3, local_run, tmp_path, capsys):
    from facesynth.generation import GenerateConfig, generate

    url = f"{s3}/merge"
    for index in (0, 1):  # each on its own machine, as it were: neither sees the other finish
        generate(GenerateConfig(out=url, worker_index=index, num_workers=2, stage=str(tmp_path / f"s{index}"),
                                write_card=False, **RUN))
    import fsspec
    fs, root = fsspec.core.url_to_fs(url)
    fs.rm_file(f"{root}/manifest.json")  # as if the last worker had died before merging
    capsys.readouterr()
    assert invoke(["merge", url]) == 0
    assert capsys.readouterr().out.strip().endswith("merged 2 workers, 12 shards")
    same_data(store_files(url), local_run)


@pytest.mark.slow
def test_another_run_on_the_prefix_is_refused_and_writes_nothing(s3, tmp_path, capsys):
    from facesynth.generation import GenerateConfig, generate

    url = f"{s3}/taken"
    generate(GenerateConfig(out=url, **RUN))
    before = store_files(url)
    capsys.readouterr()
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "16", "--rows-per-shard", "4", "--seed", "7",
                   "--candidates", "1", "--out", url, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"Error: --out: '{url}' holds a run with different seed; run that command to resume it, or use "
                   "another prefix (nothing was changed)")
    assert store_files(url) == before


def test_a_prefix_with_someone_elses_files_is_refused(s3, capsys):
    import fsspec

    fs, root = fsspec.core.url_to_fs(f"{s3}/theirs")
    fs.pipe_file(f"{root}/notes.txt", b"mine")
    capsys.readouterr()
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "8", "--out", f"{s3}/theirs", "-q"]) == 2
    assert capsys.readouterr().err.strip() == (f"Error: --out: '{s3}/theirs' is not empty (notes.txt) and holds no "
                                               "facesynth run; use an empty prefix (nothing was changed)")
    assert store_files(f"{s3}/theirs") == {"notes.txt": b"mine"}


BAD = [
    ("nosuch://bucket/x", "Error: --out: unknown storage scheme 'nosuch://' (known: "),
    ("gs://bucket/x", "Error: --out: 'gs://' needs a package that is not installed (gcsfs"),
    ("{s3}-missing/x", "Error: --out: bucket '{bucket}-missing' of '{s3}-missing/x' does not exist"),
    # a Hugging Face Storage Bucket is asked for as one (offline here: the line says so)
    ("hf://buckets/me/faces/demo", "Error: --out: 'hf://buckets/me/faces/demo': OfflineModeIsEnabled: Cannot reach "
                                   "https://huggingface.co/api/buckets/me/faces: offline mode is enabled"),
]


@pytest.mark.parametrize("url, line", BAD, ids=["scheme", "package", "bucket", "hf-bucket"])
def test_bad_locations_are_one_line_before_any_model_loads(s3, url, line, capsys, monkeypatch):
    from facesynth.generation import loading

    if url.startswith("gs://"):
        pytest.importorskip("fsspec")
        if __import__("importlib").util.find_spec("gcsfs") is not None:
            pytest.skip("gcsfs is installed here")
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the generator was loaded"))
    import huggingface_hub

    from facesynth.folder.store import hub_buckets

    if url.startswith("hf://") and not hub_buckets():  # a release before Storage Buckets: it says so
        line = (f"Error: --out: '{url}' is a Storage Bucket, which this huggingface_hub "
                f"({huggingface_hub.__version__}) cannot open; pip install -U huggingface_hub")
    values = {"s3": s3, "bucket": s3.split("://")[1]}
    capsys.readouterr()
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "8", "--out", url.format(**values), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(line.format(**values)) and len(err.splitlines()) == 1, err


def test_missing_credentials_are_named_never_printed(s3, tmp_path, capsys, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    capsys.readouterr()
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "8", "--out", f"{s3}/x", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"Error: --out: no usable credentials for '{s3}/x' (NoCredentialsError)"), err


def test_memory_store_commits_a_shard_only_with_its_manifest(tmp_path, monkeypatch):
    """memory:// (fast): a shard object no manifest lists is not counted; the run makes it again."""
    import fsspec

    from facesynth.generation import GenerateConfig, generate

    monkeypatch.setenv("FACESYNTH_STAGE", str(tmp_path / "stages"))
    url = "memory://facesynth-test/commit"
    fs = fsspec.filesystem("memory")
    try:
        generate(GenerateConfig(out=url, **{**RUN, "num_samples": 8}))
        manifest = json.loads(fs.cat_file("/facesynth-test/commit/manifest.json"))
        name = sorted(manifest["shards"])[0]
        del manifest["shards"][name]
        manifest["complete"] = False
        fs.pipe_file("/facesynth-test/commit/manifest.json", json.dumps(manifest).encode())
        fs.pipe_file(f"/facesynth-test/commit/{name}", b"half a shard")  # uploaded, never committed
        result = generate(GenerateConfig(out=url, **{**RUN, "num_samples": 8}))
        assert result.shards_written == 1
        assert fs.cat_file(f"/facesynth-test/commit/{name}")[:4] == b"PAR1"
    finally:
        fs.rm("/facesynth-test", recursive=True)


@pytest.mark.slow
def test_validate_card_and_evaluate_work_on_the_store(s3, tmp_path, capsys):
    url = f"{s3}/commands"
    capsys.readouterr()
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "16", "--rows-per-shard", "4", "--candidates",
                   "1", "--out", url, "-q"]) == 0
    out = capsys.readouterr().out
    assert f'Load it with facesynth.load("{url}")' in out
    assert invoke(["validate", url, "-q"]) == 0
    assert capsys.readouterr().out.strip().startswith(f"{url}: valid (16 rows in 12 shards, 16 images decoded")
    before = store_files(url)
    assert invoke(["card", url]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {url}/README.md"
    assert store_files(url)["README.md"] == before["README.md"]  # the same data, the same card
    assert invoke(["evaluate", url, "-q"]) == 0
    after = store_files(url)
    assert "evaluation.json" in after and "## Evaluation" in after["README.md"].decode()
    assert "evaluation.json" in json.loads(after["manifest.json"])["files"]
    assert invoke(["validate", url, "-q"]) == 0  # the card in the store matches its data
    import fsspec
    fs, root = fsspec.core.url_to_fs(url)
    fs.rm_file(f"{root}/{sorted(n for n in after if n.startswith('data/'))[0]}")
    capsys.readouterr()
    assert invoke(["validate", url, "-q"]) == 1
    assert "missing" in capsys.readouterr().out
    assert not any((tmp_path / "stages").iterdir())  # every staging folder removed


@pytest.fixture
def read_only_keys(s3, s3_server, monkeypatch):
    """Credentials that may list and read but not write, and the server enforcing them (moto's IAM); the
    server goes back to accepting any credentials afterwards."""
    import boto3
    import requests
    import s3fs

    iam = boto3.client("iam", endpoint_url=s3_server, region_name="us-east-1")
    user = f"reader-{s3.rsplit('-', 1)[-1]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*",
                                                "Action": ["s3:ListBucket", "s3:GetObject", "s3:HeadObject"]}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    s3fs.S3FileSystem.clear_instance_cache()
    requests.post(f"{s3_server}/moto-api/reset-auth", data=b"0").raise_for_status()
    try:
        yield key["SecretAccessKey"]
    finally:
        requests.post(f"{s3_server}/moto-api/reset-auth", data=b"inf").raise_for_status()
        s3fs.S3FileSystem.clear_instance_cache()


def test_a_bucket_that_refuses_writes_is_one_line_before_any_model_loads(s3, read_only_keys, capsys, monkeypatch):
    from facesynth.generation import loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the generator was loaded"))
    capsys.readouterr()
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "8", "--out", f"{s3}/x", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"Error: --out: '{s3}/x' refuses this (") and len(err.splitlines()) == 1, err
    assert read_only_keys not in err
