"""facesynth push against an autospec'd HfApi: the exact Hub calls for every case, and every error."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import ANY, call, create_autospec

try:  # the HTTP client this huggingface_hub builds its errors on
    import httpx2 as http
except ImportError:  # huggingface_hub before it moved to httpx2
    import httpx as http
import pytest
from huggingface_hub import CommitOperationDelete, DatasetCard, HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import CommitInfo, GitRefInfo, GitRefs, RepoFile

from conftest import put_in_store
from facesynth.cli import main
from facesynth.publish import check_hub_resolves as RESOLVES
from facesynth.generation import GenerateConfig, generate

REPO = "me/faces-demo"
TOKEN = "hf_live_secret_0123456789"
DEMO = dict(recipe="emotions", model="tiny", quiet=True, rows_per_shard=8, batch_size=12)


def http_error(status, cls=HfHubHTTPError, method="POST"):
    request = http.Request(method, f"https://huggingface.co/api/datasets/{REPO}")
    return cls(f"{status} error", response=http.Response(status, request=request))


def commit(oid="c0ffee1234567890", pr=None):
    return CommitInfo(commit_url=f"https://huggingface.co/datasets/{REPO}/commit/{oid}", commit_message="m",
                      commit_description="", oid=oid, pr_url=pr)


def remote_tree(root, extra=()):
    """What the Hub lists after ``root`` was pushed: LFS entries carry the sha256."""
    manifest = json.loads((root / "manifest.json").read_text())
    files = [RepoFile(path=n, size=r["bytes"], oid="x", lfs={"size": r["bytes"], "oid": r["sha256"], "pointerSize": 1})
             for n, r in manifest["shards"].items()]
    files += [RepoFile(path=p, size=10, oid="y") for p in ("README.md", "manifest.json")]
    return files + list(extra)


HEAD = "5ea1f00d" * 5


@pytest.fixture
def api():
    api = create_autospec(HfApi, instance=True)
    api.list_repo_tree.side_effect = http_error(404, RepositoryNotFoundError, "GET")
    api.list_repo_refs.return_value = GitRefs(branches=[], converts=[], tags=[])
    api.repo_info.return_value = SimpleNamespace(sha=HEAD)
    api.create_commit.return_value = commit()
    return api


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """The suite runs offline; these tests talk to the autospec'd HfApi as if the Hub answered (and its host
    name resolved)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("facesynth.publish.check_hub_resolves", lambda step: None)


@pytest.fixture
def hub(api, monkeypatch):
    """The CLI builds ``HfApi(token=...)``: hand it the autospec'd one and remember the token."""
    seen = []

    def make(token=None):
        seen.append(token)
        return api

    monkeypatch.setattr("facesynth.publish.make_api", make)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return seen


@pytest.fixture
def folder(demo_dataset, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(demo_dataset, out)
    return out


def push(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(args=["push", *args], prog_name="facesynth")
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def upload_call(folder, revision=None, create_pr=False, message="facesynth emotions 1.0.0: 24 rows"):
    """The commit call, whatever its operations (checked separately with ``operations``)."""
    return call.create_commit(repo_id=REPO, repo_type="dataset", revision=revision, operations=ANY,
                              commit_message=message, create_pr=create_pr, parent_commit=HEAD)


def listing_calls(revision=None):
    return [call.repo_info(REPO, repo_type="dataset", revision=revision),
            call.list_repo_tree(REPO, repo_type="dataset", revision=revision, recursive=True)]


def operations(api):
    """The last commit's operations: path -> bytes added (or None for a delete)."""
    ops = {}
    for op in api.create_commit.call_args.kwargs["operations"]:
        if isinstance(op, CommitOperationDelete):
            ops[op.path_in_repo] = None
        else:
            src = op.path_or_fileobj
            ops[op.path_in_repo] = src if isinstance(src, bytes) else Path(src).read_bytes()
    return ops


def test_first_push(folder, api, hub, capsys):
    code, out, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 0, err
    assert api.method_calls == [
        call.create_repo(REPO, repo_type="dataset", private=False, exist_ok=True),
        *listing_calls(),
        upload_call(folder),
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(operations(api)) == {"README.md", "manifest.json", "assets/samples.png", *manifest["shards"]}
    assert hub == [TOKEN]  # from HF_TOKEN
    assert f"https://huggingface.co/datasets/{REPO}\n" in out
    assert f'load_dataset("{REPO}", revision="c0ffee1234567890")' in out
    assert TOKEN not in out + err


@pytest.mark.slow
def test_repush_of_a_grown_version_deletes_stale_shards_and_tags(tmp_path, api, hub, capsys):
    folder = tmp_path / "grow"
    # 2 rows per shard: 16 rows have full shards, which 24 keep (small shards whose group of calls changes
    # are made again, see layout.call_contexts)
    small = {**DEMO, "rows_per_shard": 2}
    generate(GenerateConfig(out=folder, num_samples=16, **small))
    old = remote_tree(folder)
    generate(GenerateConfig(out=folder, num_samples=24, **small))  # version 1.1.0, reuses full shards
    stale = RepoFile(path="data/train-00007.parquet", size=4096, oid="z", lfs={"size": 4096, "oid": "0" * 64,
                                                                              "pointerSize": 1})
    api.list_repo_tree.side_effect = None
    api.list_repo_tree.return_value = old + [stale]

    code, out, err = push([str(folder), "--repo-id", REPO, "--dry-run"], capsys)
    assert code == 0, err
    before = {e.path: e.lfs.sha256 for e in old if e.lfs}
    after = {n: r["sha256"] for n, r in json.loads((folder / "manifest.json").read_text())["shards"].items()}
    kept = [n for n in after if before.get(n) == after[n]]
    changed = [n for n in after if n in before and before[n] != after[n]]
    new = [n for n in after if n not in before]
    assert kept and (changed or new)  # shards of 1.0.0 that did not grow are kept, the grown ones are sent
    for name in kept:
        assert f"keep    {name}" in out
    for name in changed:
        assert f"upload  {name}" in out and f"{name}  " in out
    for name in new:
        assert f"upload  {name}" in out
    assert "delete  data/train-00007.parquet  4.1 kB (stale)" in out
    uploads = len(changed) + len(new) + 3  # the shards, card, manifest and grid
    assert out.splitlines()[-1].startswith(f"dry run: would upload {uploads} files (")
    assert api.method_calls == [call.list_repo_tree(REPO, repo_type="dataset", revision=None, recursive=True)]

    api.reset_mock()
    api.list_repo_tree.return_value = old + [stale]
    api.hf_hub_download.return_value = str(_remote_card(folder, tmp_path, lambda text: text))  # 1.0.0's card
    code, out, err = push([str(folder), "--repo-id", REPO, "--tag", "v1.1.0"], capsys)
    assert code == 0, err
    assert api.method_calls == [
        call.list_repo_refs(REPO, repo_type="dataset"),
        call.create_repo(REPO, repo_type="dataset", private=False, exist_ok=True),
        *listing_calls(),
        call.hf_hub_download(REPO, "README.md", repo_type="dataset", revision=HEAD),
        upload_call(folder, message="facesynth emotions 1.1.0: 24 rows"),
        call.create_tag(REPO, tag="v1.1.0", tag_message="version 1.1.0", revision="c0ffee1234567890",
                        repo_type="dataset"),
    ]
    assert "tagged c0ffee1234 as v1.1.0" in out
    assert f'load_dataset("{REPO}", revision="v1.1.0")' in out
    sent = operations(api)
    assert sent["data/train-00007.parquet"] is None  # the stale shard is deleted in the same commit
    assert not any(name in sent for name in kept)  # unchanged shards are not sent again
    assert all(sent[name] == (folder / name).read_bytes() for name in changed + new)


def test_branch_private_and_message(folder, api, hub, capsys):
    code, _, err = push([str(folder), "--repo-id", REPO, "--branch", "dev", "--private", "-m", "try"], capsys)
    assert code == 0, err
    assert api.method_calls == [
        call.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True),
        call.create_branch(REPO, repo_type="dataset", branch="dev", exist_ok=True),
        *listing_calls("dev"),
        upload_call(folder, revision="dev", message="try"),
    ]


def test_pull_request(folder, api, hub, capsys):
    api.create_commit.return_value = commit(pr=f"https://huggingface.co/datasets/{REPO}/discussions/3")
    code, out, err = push([str(folder), "--repo-id", REPO, "--create-pr"], capsys)
    assert code == 0, err
    assert api.method_calls[-1] == upload_call(folder, create_pr=True)
    assert f"https://huggingface.co/datasets/{REPO}/discussions/3" in out


def test_token_option_wins_and_is_never_printed_or_written(folder, api, hub, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    api.create_repo.side_effect = http_error(401)
    code, out, err = push([str(folder), "--repo-id", REPO, "--token", TOKEN], capsys)
    assert hub == [TOKEN] and code == 1
    assert err == ("Error: creating the repo: not logged in, or the token is invalid: give --token, set HF_TOKEN, "
                   "or run `hf auth login`\n")
    assert TOKEN not in out + err
    assert not any(TOKEN.encode() in p.read_bytes() for p in folder.rglob("*") if p.is_file())


ERRORS = [
    ("create_repo", http_error(403),
     f"creating the repo: no write access to '{REPO}': use a token with write permission for that namespace"),
    ("create_commit", http_error(412),
     f"uploading: '{REPO}' changed since this push compared with it (someone else pushed); run the same command "
     "again to finish (files already uploaded are not sent twice)"),
    ("create_commit", http_error(429),
     "uploading: rate limited by the Hub: wait a few minutes, then run the same command again to finish "
     "(files already uploaded are not sent twice)"),
    ("create_commit", http_error(503),
     "uploading: the Hub answered 503: run the same command again to finish (files already uploaded are not sent "
     "twice)"),
    ("list_repo_tree", http.ConnectError("dns failure"),
     "listing the repo: cannot reach the Hub (ConnectError); check the network, then run the same command again "
     "to finish (files already uploaded are not sent twice)"),
]


@pytest.mark.parametrize("method,error,message", ERRORS, ids=[m for m, _, _ in ERRORS])
def test_hub_errors_are_one_line_and_a_rerun_completes(method, error, message, folder, api, hub, capsys):
    getattr(api, method).side_effect = error
    code, out, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 1 and err == f"Error: {message}\n"
    getattr(api, method).side_effect = None if method != "list_repo_tree" else \
        http_error(404, RepositoryNotFoundError, "GET")
    code, out, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 0, err
    assert api.method_calls[-1] == upload_call(folder)


def test_not_logged_in(folder, api, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    code, _, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 1 and err == "Error: not logged in: give --token, set HF_TOKEN, or run `hf auth login`\n"


BAD = [
    (["--repo-id", "not a repo"], "--repo-id: 'not a repo' is not a dataset repo id of the form ORG/NAME"),
    (["--repo-id", "justaname"], "--repo-id: 'justaname' is not a dataset repo id of the form ORG/NAME"),
    (["--repo-id", REPO, "--tag", "v1", "--create-pr"],
     "--tag: not with --create-pr; tag the commit once the pull request is merged"),
    # tags and branches are checked as git refs before anything is sent (the Hub would refuse them after the upload)
    (["--repo-id", REPO, "--tag", "v1..2", "--dry-run"], "--tag: 'v1..2' is not a valid tag or branch name: it "
                                                         "holds '..'"),
    (["--repo-id", REPO, "--tag", "v 1"], "--tag: 'v 1' is not a valid tag or branch name: it holds ' ', which git "
                                          "refs may not"),
    (["--repo-id", REPO, "--tag", "-x"], "--tag: '-x' is not a valid tag or branch name: it starts with '-'"),
    (["--repo-id", REPO, "--tag", "v1~1"], "--tag: 'v1~1' is not a valid tag or branch name: it holds '~', which "
                                           "git refs may not"),
    (["--repo-id", REPO, "--tag", "@"], "--tag: '@' is not a valid tag or branch name: it is '@' or holds '@{'"),
    (["--repo-id", REPO, "--branch", "dev.lock"], "--branch: 'dev.lock' is not a valid tag or branch name: it has a "
                                                  "part that starts with '.' or ends with '.lock'"),
    (["--repo-id", REPO, "--branch", "a//b", "--dry-run"], "--branch: 'a//b' is not a valid tag or branch name: it "
                                                           "holds '//'"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m[:20] for _, m in BAD])
def test_bad_arguments_exit_2_before_any_hub_call(args, message, folder, api, hub, capsys):
    code, _, err = push([str(folder), *args], capsys)
    assert code == 2 and err == f"Error: {message}\n"
    assert api.method_calls == []


def test_an_existing_tag_is_refused_before_uploading(folder, api, hub, capsys):
    api.list_repo_refs.return_value = GitRefs(branches=[], converts=[], tags=[GitRefInfo("v1", "refs/tags/v1", "a")])
    code, _, err = push([str(folder), "--repo-id", REPO, "--tag", "v1"], capsys)
    assert code == 2 and err == f"Error: --tag: 'v1' already exists in '{REPO}'; tags are releases, choose a new one\n"
    assert api.method_calls == [call.list_repo_refs(REPO, repo_type="dataset")]


def test_an_invalid_folder_is_refused(folder, api, hub, capsys):
    (folder / "data" / "happy" / "train-00000.parquet").write_bytes(b"garbage")
    code, _, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 2
    assert err.startswith(f"Error: '{folder}' is not ready to publish: ")
    assert err.endswith(f"run `facesynth validate {folder}`\n")
    assert api.method_calls == []


def test_the_uploaded_card_names_the_repo_and_tag_and_no_local_path(folder, api, hub, capsys):
    code, out, err = push([str(folder), "--repo-id", REPO, "--tag", "v1.0.0", "--gated"], capsys)
    assert code == 0, err
    sent = operations(api)
    text = sent["README.md"].decode()
    assert "/tmp" not in text and str(folder) not in text and f'"{folder.name}"' not in text
    snippets = [line for line in text.splitlines() if "load_dataset(" in line or "facesynth.load(" in line]
    assert snippets and all(f'"{REPO}"' in line for line in snippets)
    assert f'load_dataset("{REPO}", revision="v1.0.0")' in text and 'revision="v1.0"' not in text
    assert f"https://huggingface.co/datasets/{REPO}" in text
    data = DatasetCard(text).data.to_dict()
    for key, value in {"annotations_creators": ["machine-generated"], "language_creators": ["machine-generated"],
                       "language": ["en"], "source_datasets": ["original"],
                       "task_ids": ["multi-class-image-classification"], "pretty_name": "facesynth emotions"}.items():
        assert data[key] == value, key
    assert {"emotion", "gender", "ethnicity", "synthetic", "test-data"} <= set(data["tags"])
    assert data["extra_gated_prompt"] and data["extra_gated_fields"]
    assert "## Out-of-scope use" in text and "## Personal and sensitive information" in text
    assert "random weights" in text and "test noise" in text  # a tiny dataset says so plainly
    # each per-label config's data_files match only that label's rows, among the files pushed
    import fnmatch

    import pyarrow.parquet as pq

    shards = [p for p in sent if p.startswith("data/")]
    for config in data["configs"][1:]:
        for entry in config["data_files"]:
            matched = fnmatch.filter(shards, entry["path"])
            assert matched
            labels = {x for p in matched for x in pq.read_table(folder / p, columns=["emotion"])["emotion"].to_pylist()}
            names = DatasetCard(text).data.to_dict()["dataset_info"][0]["features"][2]["dtype"]["class_label"]["names"]
            assert {names[str(i)] for i in labels} == {config["config_name"]}
    manifest = sent["manifest.json"].decode()
    assert "/tmp" not in manifest and json.loads(manifest)["recipe"]["source"] == "emotions.yaml"


def test_a_local_model_is_named_by_its_folder_in_what_is_pushed(tiny_pipe, tmp_path, api, hub, capsys):
    model = tmp_path / "models" / "my-sd"
    tiny_pipe.save_pretrained(model, safe_serialization=True)
    out = tmp_path / "local"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=4, model=str(model), clip_model="tiny", steps=2,
                            width=64, height=64, quiet=True))
    local = json.loads((out / "manifest.json").read_text())
    assert local["model"]["name"] == "my-sd" and local["model"]["path"] == str(model.resolve())
    code, _, err = push([str(out), "--repo-id", REPO], capsys)
    assert code == 0, err
    sent = operations(api)
    assert str(tmp_path) not in sent["manifest.json"].decode() + sent["README.md"].decode()
    published = json.loads(sent["manifest.json"])
    assert published["model"]["name"] == "my-sd" and "path" not in published["model"]
    assert published["parameters"]["model"] == "my-sd"


def test_a_local_adapter_is_named_by_its_file_and_its_path_stays_here(tmp_path, api, hub, capsys):
    from conftest import tiny_lora

    pytest.importorskip("peft")
    lora = tiny_lora(tmp_path / "private" / "adapters", name="face-detail.safetensors")
    out = tmp_path / "adapted"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=4, model="tiny", quiet=True, lora=(str(lora),)))
    assert json.loads((out / "manifest.json").read_text())["loras"][0]["path"] == str(lora.resolve())
    code, _, err = push([str(out), "--repo-id", REPO], capsys)
    assert code == 0, err
    sent = operations(api)
    assert str(tmp_path) not in sent["manifest.json"].decode() + sent["README.md"].decode()
    published = json.loads(sent["manifest.json"])
    assert [(r["name"], "path" in r) for r in published["loras"]] == [("face-detail.safetensors", False)]
    assert published["parameters"]["loras"][0]["name"] == "face-detail.safetensors"
    assert "<code>face-detail.safetensors</code> at 1.0 (sha256" in sent["README.md"].decode()


def _remote_card(folder, tmp_path, edit):
    """The Hub has a README: the one facesynth pushed, edited by people there."""
    from facesynth.dataset_card import build_card

    text = edit(str(build_card(folder, REPO, "v1.0.0")))
    path = tmp_path / "remote-README.md"
    path.write_text(text)
    return path


def test_a_re_push_keeps_what_people_wrote_on_the_hub(folder, tmp_path, api, hub, capsys):
    edited = _remote_card(folder, tmp_path, lambda t: t.replace("---\nannotations_creators", "---\nmy_key: kept\n"
                                                                 "annotations_creators", 1)
                          .replace("<!-- facesynth:end -->", "<!-- facesynth:end -->\n\n## Notes from the team\n\n"
                                   "Reviewed by hand.\n"))
    api.list_repo_tree.side_effect = None
    api.list_repo_tree.return_value = remote_tree(folder)
    api.hf_hub_download.return_value = str(edited)
    code, _, err = push([str(folder), "--repo-id", REPO, "--tag", "v1.1.0"], capsys)
    assert code == 0, err
    api.hf_hub_download.assert_called_once_with(REPO, "README.md", repo_type="dataset", revision=HEAD)
    text = operations(api)["README.md"].decode()
    assert "Reviewed by hand." in text and DatasetCard(text).data.to_dict()["my_key"] == "kept"
    assert 'revision="v1.1.0"' in text and 'revision="v1.0.0"' not in text  # the generated part is new


def test_a_hub_readme_facesynth_did_not_write_is_refused_unless_overwritten(folder, tmp_path, api, hub, capsys):
    foreign = tmp_path / "theirs.md"
    foreign.write_text("---\nlicense: mit\n---\n# Someone's own card\n")
    api.list_repo_tree.side_effect = None
    api.list_repo_tree.return_value = remote_tree(folder)
    api.hf_hub_download.return_value = str(foreign)
    code, _, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 2
    assert err == (f"Error: --repo-id: the README.md of '{REPO}' was not written by facesynth (or its facesynth "
                   "markers were removed), so it cannot be merged; give --overwrite-card to replace it\n")
    api.create_commit.assert_not_called()
    code, _, err = push([str(folder), "--repo-id", REPO, "--overwrite-card"], capsys)
    assert code == 0, err
    assert "Someone's own card" not in operations(api)["README.md"].decode()


def test_a_dry_run_works_offline(folder, api, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("facesynth.publish.make_api", lambda token=None: api)
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    code, out, err = push([str(folder), "--repo-id", REPO, "--dry-run"], capsys)
    assert code == 0 and err == ""
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == stamps  # nothing rewritten
    lines = out.splitlines()
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {line.split()[1] for line in lines[:-1]}
    assert listed == {"README.md", "manifest.json", "assets/samples.png", *manifest["shards"]}
    assert all(line.startswith("upload  ") and line.endswith("(not compared)") for line in lines[:-1])
    assert lines[-1].startswith(f"dry run: the Hub could not be reached (HF_HUB_OFFLINE is set), so '{REPO}' was "
                                f"not compared: all {len(listed)} files (")
    assert "files already uploaded" not in out and api.method_calls == []


def test_the_hub_client_names_facesynth(monkeypatch):
    from facesynth import __version__
    from facesynth.publish import make_api

    api = make_api("hf_x")
    assert api.library_name == "facesynth" and api.library_version == __version__


def test_rows_rejected_in_review_block_the_push_until_made_again_then_the_verdicts_go_up(folder, api, hub, capsys):
    from conftest import reject, rows

    sid = rows(folder, ["sample_id"])[0]["sample_id"]
    reject(folder, [sid], "six fingers")
    code, _, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 2 and "rejected in review (six fingers) and still in the dataset" in err
    assert api.method_calls == []
    generate(GenerateConfig(out=folder, num_samples=24, **DEMO))
    code, out, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 0, err
    sent = operations(api)
    assert sent["verdicts.jsonl"] == (folder / "verdicts.jsonl").read_bytes()
    card = sent["README.md"].decode()
    assert "## Human review" in card and "| six fingers | 1 |" in card
    assert json.loads(sent["manifest.json"])["version"] == "1.1.0"


def test_push_sends_only_what_the_manifest_lists(folder, api, hub, capsys, tmp_path):
    """Hidden files and links in assets/ stay home; a link out of the folder is refused."""
    import os

    secret = tmp_path / "secret.txt"
    secret.write_text("HF_TOKEN=hf_secret")
    (folder / "assets" / ".env").write_text("HF_TOKEN=hf_secret")
    (folder / "assets" / "notes.txt").write_text("mine")
    os.symlink(secret, folder / "assets" / "outside.txt")
    code, out, _ = push([str(folder), "--repo-id", REPO, "--dry-run"], capsys)
    assert code == 0
    listed = {line.split()[1] for line in out.splitlines()[:-1]}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert listed == {"README.md", "manifest.json", "assets/samples.png", *manifest["shards"]}
    (folder / "assets" / "samples.png").unlink()
    os.symlink(secret, folder / "assets" / "samples.png")  # the grid itself a link out of the folder
    code, _, err = push([str(folder), "--repo-id", REPO, "--dry-run"], capsys)
    assert code == 2 and err == (f"Error: manifest.json: 'assets/samples.png' leads out of '{folder}' (through a "
                                 "symbolic link); refused\n")


@pytest.mark.parametrize("name", ["data/sad/../../../outside.parquet", "/etc/passwd", "data//x.parquet",
                                  "data\\x.parquet"])
def test_a_manifest_naming_a_file_outside_the_folder_is_refused_everywhere(folder, api, hub, capsys, name):
    from conftest import invoke

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][name] = next(iter(manifest["shards"].values()))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    message = (f"'{folder / 'manifest.json'}': names the file {name!r}, which is not a plain path inside the dataset "
               "folder")
    for args in (["validate", str(folder)], ["push", str(folder), "--repo-id", REPO, "--dry-run"],
                 ["card", str(folder)]):
        assert invoke(args) == 2
        assert capsys.readouterr().err == f"Error: {message}\n"
    assert api.method_calls == []


def test_a_quoted_tag_and_an_odd_folder_name_are_string_literals_in_the_snippets(demo_dataset, tmp_path, capsys):
    import ast
    import re
    import shutil

    from conftest import invoke

    root = tmp_path / 'my "odd"\nname'
    shutil.copytree(demo_dataset, root)
    assert invoke(["card", str(root), "--tag", 'v1"); import os; os.system("x']) == 2  # a space: not a git ref
    assert invoke(["card", str(root), "--tag", 'v1"+os.getcwd()+"']) == 0
    capsys.readouterr()
    text = (root / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") ==
             "load_dataset"]
    assert {c.args[0].value for c in calls} == {'my "odd"\nname'}
    assert [kw.value.value for c in calls for kw in c.keywords if kw.arg == "revision"] == ['v1"+os.getcwd()+"']


def test_without_a_network_push_fails_at_once_and_a_dry_run_says_so_in_its_own_words(folder, monkeypatch, capsys):
    """No DNS (as on a machine without a network): one line at once, not after huggingface_hub's ~25 s of
    retries; the dry run lists every file and says nothing of finishing an upload."""
    import socket
    import time

    from facesynth import publish

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(publish, "check_hub_resolves", RESOLVES)  # the real check, on a machine without DNS
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    start = time.monotonic()
    code, out, err = push([str(folder), "--repo-id", REPO, "--dry-run"], capsys)
    assert code == 0 and err == "" and time.monotonic() - start < 10
    assert out.splitlines()[-1].startswith(f"dry run: the Hub could not be reached (cannot reach the Hub "
                                           f"(huggingface.co does not resolve); check the network), so '{REPO}' "
                                           "was not compared: all ")
    assert "files already uploaded" not in out and "run the same command again" not in out
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, _, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 1 and err == ("Error: reaching the Hub: cannot reach the Hub (huggingface.co does not resolve); "
                                 "check the network\n")


def test_a_push_sends_the_evaluation_and_its_pictures(folder, api, capsys):
    from facesynth.evaluate import evaluate

    evaluate(folder, progress=False)
    code, out, err = push([str(folder), "--repo-id", REPO, "--dry-run"], capsys)
    assert code == 0, err
    listed = {line.split()[1] for line in out.splitlines()[:-1]}
    drawn = {f"assets/evaluation/separability-{a}.png" for a in ("emotion", "gender", "ethnicity")}
    assert {"evaluation.json", *drawn} <= listed
    (folder / "evaluation.json").write_text("{}")  # altered after evaluate: validate, and so push, refuse it
    code, out, err = push([str(folder), "--repo-id", REPO, "--dry-run"], capsys)
    assert code != 0 and "evaluation.json" in err


def test_local_paths_in_the_recipe_text_are_published_as_names(tmp_path, monkeypatch, api, hub, capsys):
    """A recipe naming its verifier by an absolute path and its adapter by a path that climbs: the published
    recipe names both by their file or folder name, and keeps the rest of its text, comments included."""
    from conftest import PAIR, tiny_classifier, tiny_lora

    private = tmp_path / "home" / "someone" / "private"
    verifier = tiny_classifier(private / "vit")
    tiny_lora(private / "adapters", name="face.safetensors")
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    climbing = "../../home/someone/private/adapters/face.safetensors"
    recipe = (PAIR + f"verify:\n  emotion: {{model: {verifier}, labels: {{Sad: sad, anger: other, "
              f"surprise: other, neutral: other}}}}\nloras: ['{climbing}@0.5']  # my adapter\n")
    (work / "r.yaml").write_text(recipe)
    generate(GenerateConfig(recipe="r.yaml", out=work / "out", num_samples=4, model="tiny", quiet=True,
                            verify_mode="record"))
    assert str(verifier) in json.loads((work / "out" / "manifest.json").read_text())["recipe"]["yaml"]
    code, _, err = push([str(work / "out"), "--repo-id", REPO], capsys)
    assert code == 0, err
    sent = operations(api)
    published = sent["manifest.json"].decode()
    assert "/home/" not in published and str(tmp_path) not in published and "../" not in published
    text = json.loads(published)["recipe"]["yaml"]
    assert "{model: vit, labels:" in text and "loras: ['face.safetensors@0.5']  # my adapter" in text
    from facesynth.recipe import parse_recipe

    assert parse_recipe(text).verify["emotion"].model == "vit"


def record_commits(api) -> list[dict[str, str]]:
    """Each commit's operations as path -> sha256, taken when the commit is made (as the Hub client reads them)."""
    made = []

    def create_commit(**kwargs):
        made.append({op.path_in_repo: op.upload_info.sha256.hex() for op in kwargs["operations"]})
        return commit()

    api.create_commit.side_effect = create_commit
    return made


@pytest.mark.slow
def test_a_dataset_in_a_store_is_pushed_shard_by_shard(folder, s3, api, hub, capsys, monkeypatch, tmp_path):
    url = f"{s3}/faces/demo"
    put_in_store(folder, url)
    made = record_commits(api)
    code, _, err = push([str(folder), "--repo-id", REPO], capsys)  # the local push, for reference
    assert code == 0, err
    api.reset_mock()
    monkeypatch.setenv("FACESYNTH_STAGE_BYTES", "1")  # a budget of one shard: the stage never holds two
    seen = []

    def preupload(additions, **repo):
        (op,) = additions
        seen.append((op.path_in_repo, sorted(p.name for p in (tmp_path / "stages").rglob("*.parquet")), repo))

    api.preupload_lfs_files.side_effect = preupload
    code, out, err = push([url, "--repo-id", REPO], capsys)
    assert code == 0, err
    assert len(made) == 2 and made[1] == made[0]  # the same commit, byte for byte, as from a local folder
    shards = sorted(json.loads((folder / "manifest.json").read_text())["shards"])
    assert [path for path, _, _ in seen] == shards  # each new shard pre-uploaded as it came down ...
    assert all(staged == [Path(path).name] for path, staged, _ in seen)  # ... alone in the stage
    assert all(repo == dict(repo_id=REPO, repo_type="dataset", revision=None, create_pr=False) for *_, repo in seen)
    assert not list((tmp_path / "stages").rglob("*"))  # the stage is gone
    assert str(tmp_path) not in out + err
    code, out, err = push([url, "--repo-id", REPO, "--dry-run"], capsys)
    assert code == 0 and all(f"upload  {name}  " in out for name in shards)
    assert out.splitlines()[-1].startswith(f"dry run: would upload {len(shards) + 3} files")


@pytest.mark.slow
def test_a_damaged_shard_in_the_store_is_refused_before_any_upload(folder, s3, api, hub, capsys):
    import fsspec

    url = f"{s3}/faces/demo"
    put_in_store(folder, url)
    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{root}/data/happy/train-00000.parquet", b"garbage")
    code, _, err = push([url, "--repo-id", REPO], capsys)
    assert code == 2
    assert err.startswith(f"Error: '{url}' is not ready to publish: ") and err.endswith(
        f"run `facesynth validate {url}`\n") and len(err.splitlines()) == 1
    assert api.method_calls == []
