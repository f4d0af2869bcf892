"""Every load path, on a real tiny dataset, through real load_dataset calls."""

import subprocess

import datasets
import pytest

import facesynth
from facesynth.builder import Facesynth, content_fingerprint, load, read_manifest
from facesynth.errors import OutputError

from conftest import PAIR, as_older_format


def _labels(ds, col):
    names = ds.features[col].names
    return {names[i] for i in ds[col]}


def test_load_dataset_default_config_and_splits(demo_dataset):
    ds = datasets.load_dataset(str(demo_dataset))
    manifest = read_manifest(demo_dataset)
    assert {k: len(v) for k, v in ds.items()} == manifest["plan"]["splits"]
    assert isinstance(ds["train"].features["emotion"], datasets.ClassLabel)
    assert ds["train"][0]["image"].size == (64, 64)


def test_load_dataset_per_label_config(demo_dataset):
    ds = datasets.load_dataset(str(demo_dataset), "happy")
    assert all(_labels(d, "emotion") == {"happy"} for d in ds.values())
    full = datasets.load_dataset(str(demo_dataset), split="train")
    assert len(ds["train"]) == sum(1 for x in full["emotion"] if x == 0)


def test_load_dataset_split_streaming_columns_filters(demo_dataset):
    test = datasets.load_dataset(str(demo_dataset), split="test")
    assert len(test) == read_manifest(demo_dataset)["plan"]["splits"]["test"]
    stream = datasets.load_dataset(str(demo_dataset), split="train", streaming=True)
    assert sum(1 for _ in stream) == len(datasets.load_dataset(str(demo_dataset), split="train"))
    cols = datasets.load_dataset(str(demo_dataset), split="train", columns=["sample_id", "emotion"])
    assert cols.column_names == ["sample_id", "emotion"]
    sad = datasets.load_dataset(str(demo_dataset), split="train", streaming=True, filters=[("emotion", "==", 1)])
    rows = list(sad)
    assert rows and {r["emotion"] for r in rows} == {1}


def test_revision_from_a_local_git_repo(demo_dataset, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(demo_dataset, repo, ignore=shutil.ignore_patterns(".facesynth"))
    git = ["git", "-C", str(repo), "-c", "user.name=facesynth", "-c", "user.email=facesynth@localhost"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    subprocess.run([*git, "tag", "v1.0"], check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--branch", "v1.0", str(repo), str(clone)], check=True)
    ds = datasets.load_dataset(str(clone), split="train")
    assert len(ds) == read_manifest(demo_dataset)["plan"]["splits"]["train"]


def test_builder_filters_by_name(demo_dataset):
    b = Facesynth(data_dir=str(demo_dataset), filters={"emotion": "happy", "gender": ["female"]})
    b.download_and_prepare()
    ds = b.as_dataset()
    assert ds and all(_labels(d, "emotion") == {"happy"} and _labels(d, "gender") == {"female"} for d in ds.values())
    stream = b.as_streaming_dataset(split="train")
    assert sum(1 for _ in stream) == len(ds["train"])


def test_builder_columns_and_convenience_load(demo_dataset):
    ds = facesynth.load(str(demo_dataset), split="train", emotion=["sad", "angry"])
    assert _labels(ds, "emotion") <= {"sad", "angry"} and len(ds) > 0
    cols = facesynth.builder.load(str(demo_dataset), split="train", columns=["sample_id", "gender"])
    assert cols.column_names == ["sample_id", "gender"]


def test_cache_is_keyed_by_content(demo_dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(demo_dataset, copy)
    b1 = Facesynth(data_dir=str(copy))
    manifest = read_manifest(copy)
    name = sorted(manifest.shards)[0]
    manifest.shards[name]["sha256"] = "0" * 64  # as if that shard were regenerated
    manifest.save(copy)
    b2 = Facesynth(data_dir=str(copy))
    assert b1.hash == content_fingerprint(read_manifest(demo_dataset)) != b2.hash
    assert b1.cache_dir != b2.cache_dir

    class Other(Facesynth):
        pass

    assert Other(data_dir=str(copy)).cache_dir != b2.cache_dir  # another builder class, another cache


def test_bad_filters_and_folders(demo_dataset, tmp_path):
    with pytest.raises(OutputError, match="'glum' is not a value of 'emotion'"):
        facesynth.load(str(demo_dataset), emotion="glum")
    with pytest.raises(OutputError, match="no manifest.json"):
        Facesynth(data_dir=str(tmp_path))


def test_builder_configs_are_the_primary_labels_and_splits_come_in_order(demo_dataset):
    b = Facesynth(data_dir=str(demo_dataset), config_name="sad")
    assert list(b.builder_configs) == ["default", "happy", "sad", "angry", "surprised"]
    assert b.config.name == "sad" and b.config.filters == {"emotion": "sad"}
    assert Facesynth(data_dir=str(demo_dataset)).config.name == "default"
    b.download_and_prepare()
    ds = b.as_dataset()
    assert list(ds) == ["train", "validation", "test"]
    assert all(_labels(d, "emotion") == {"sad"} for d in ds.values())
    whole = Facesynth(data_dir=str(demo_dataset), config_name="default")
    whole.download_and_prepare()
    assert list(whole.as_dataset()) == ["train", "validation", "test"]
    with pytest.raises(OutputError, match=r"config_name: 'glum' is not a config of this dataset \(default, happy, "
                                          r"sad, angry, surprised\)"):
        Facesynth(data_dir=str(demo_dataset), config_name="glum")
    with pytest.raises(OutputError, match="contradicts config 'sad'"):
        Facesynth(data_dir=str(demo_dataset), config_name="sad", filters={"emotion": "happy"})
    both = Facesynth(data_dir=str(demo_dataset), config_name="sad", filters={"gender": "female"})
    assert both.config.filters == {"gender": "female", "emotion": "sad"}
    assert b.builder_configs["sad"].filters == {"emotion": "sad"}  # the declared config stays as it was
    both.download_and_prepare()
    rows = both.as_dataset(split="train")
    assert _labels(rows, "emotion") == {"sad"} and _labels(rows, "gender") == {"female"}


class _Counting:
    """A file object that counts the bytes read through it."""

    def __init__(self, f, log, path):
        self._f, self._log, self._path = f, log, path

    def read(self, n=-1):
        data = self._f.read(n)
        self._log[self._path] = self._log.get(self._path, 0) + len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def hub_mirror(demo_dataset, tmp_path, monkeypatch):
    """``hf://datasets/me/faces@main/...`` served from a local copy: the transport stands in for HTTP, while
    the code under test (URL, manifest read, fragments, row-group pushdown) is the real one."""
    import shutil

    import fsspec
    import huggingface_hub
    from fsspec.implementations.dirfs import DirFileSystem

    root = tmp_path / "mirror"
    shutil.copytree(demo_dataset, root / "datasets" / "me" / "faces@main")
    log: dict[str, int] = {}

    class Mirror(DirFileSystem):
        protocol = "hf"

        def __init__(self, *args, **kwargs):
            super().__init__(path=str(root), fs=fsspec.filesystem("file"))

        def open(self, path, mode="rb", *args, **kwargs):
            return _Counting(super().open(path, mode, *args, **kwargs), log, self._strip_protocol(path))

    fsspec.register_implementation("hf", Mirror, clobber=True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("downloaded the repo"))
    yield log
    fsspec.register_implementation("hf", huggingface_hub.HfFileSystem, clobber=True)


def test_loading_from_the_hub_reads_only_the_matching_files(hub_mirror, demo_dataset):
    happy = facesynth.load("me/faces", emotion="happy")
    assert list(happy) == ["train", "validation", "test"]
    assert all(_labels(d, "emotion") == {"happy"} for d in happy.values())
    assert sum(len(d) for d in happy.values()) == 6
    opened = {p.split("faces@main/", 1)[1] for p in hub_mirror}
    assert opened == {"manifest.json", "data/happy/train-00000.parquet", "data/happy/validation-00000.parquet",
                      "data/happy/test-00000.parquet"}  # no other label's file, no snapshot of the repo
    hub_mirror.clear()
    stream = facesynth.load("me/faces", split="train", streaming=True, emotion="sad", gender="female")
    rows = list(stream)
    assert rows and {r["emotion"] for r in rows} == {1} and {r["gender"] for r in rows} == {1}
    opened = {p.split("faces@main/", 1)[1]: n for p, n in hub_mirror.items()}
    assert {"manifest.json", "data/sad/train-00000.parquet"} <= set(opened)
    assert all(p == "manifest.json" or p.startswith("data/sad/") for p in opened)  # no other label's file


@pytest.mark.parametrize("kwargs, message", [
    ({"emotion": 1}, "filters: emotion: give a value name or a list of them (happy, sad, angry, surprised), not int 1"),
    ({"emotion": None}, "filters: emotion: give a value name or a list of them"),
    ({"emotion": b"happy"}, "filters: emotion: give a value name or a list of them (happy, sad, angry, surprised), "
                            "not bytes b'happy'"),
    ({"emotion": []}, "filters: emotion: give a value name or a list of them"),
    ({"filters": "str"}, "filters: 'filters' is not an attribute (emotion, gender, ethnicity)"),
    ({"split": 3}, "split: must be text (got int)"),
    ({"columns": "image"}, "columns: give a list of column names"),
    ({"wait": "yes"}, "wait: True, False or seconds (got str)"),
])
def test_load_with_wrong_types_is_one_line(demo_dataset, kwargs, message):
    from facesynth import load as top_level_load

    with pytest.raises(OutputError) as refused:
        top_level_load(str(demo_dataset), **kwargs)
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize("path", ["/data/nope/x", "./nope", "~/nope", "a/b/c"])
def test_a_local_path_that_does_not_exist_is_not_taken_for_a_hub_id(path):
    with pytest.raises(OutputError, match=r"no such folder \(a Hub dataset is named ORG/NAME\)"):
        load(path)


def test_loading_while_a_writer_holds_the_folder_is_one_line_or_waits(demo_copy):
    import os
    import threading
    import time

    from facesynth.folder.lock import FolderBusy, FolderLock

    lock = FolderLock(demo_copy).acquire()
    try:
        with pytest.raises(FolderBusy) as busy:
            load(str(demo_copy), split="train")
        assert str(busy.value) == (f"'{demo_copy}': a facesynth process (pid {os.getpid()}) is writing it; load "
                                   "it when that finishes, or pass wait=True to wait for it")
        with pytest.raises(FolderBusy, match=r"a facesynth process \(pid \d+\) is writing it"):
            Facesynth(data_dir=str(demo_copy))  # the builder class itself, as users import it
        start = time.monotonic()
        with pytest.raises(FolderBusy, match="after waiting 0.3 s"):
            load(str(demo_copy), split="train", wait=0.3)
        assert time.monotonic() - start >= 0.3
        threading.Timer(0.5, lock.release).start()
        assert len(load(str(demo_copy), split="train", wait=True)) == 16  # every train row once the writer is done
    finally:
        lock.release()


@pytest.mark.slow
def test_a_default_dataloader_takes_every_column(tmp_path):
    """Ragged batches, no face box, no safety score, no speed-ups: the default collate takes the full row."""
    import pyarrow.parquet as pq
    import torch
    from torch.utils.data import DataLoader

    from facesynth.generation import GenerateConfig, generate
    from facesynth.reproduce import Reproducer

    out, recipe = tmp_path / "dl", tmp_path / "pair.yaml"
    recipe.write_text(PAIR)  # one prompt length: 4 samples share a batch, and a 5-row shard ends with 1
    generate(GenerateConfig(recipe=str(recipe), out=out, num_samples=12, model="tiny", quiet=True,
                            rows_per_shard=5, batch_size=12))
    table = pq.read_table(sorted(out.glob("data/*/*.parquet")), columns=["batch", "unet_calls"]).to_pydict()
    assert len({len(b.split()) for b in table["batch"]}) > 1  # batches of several sizes: a list would be ragged
    ds = datasets.load_dataset(str(out), split="train").with_format("torch")
    assert not {"face_box", "safety_score"} & set(ds.column_names)  # measured only with --faces / --safety
    seen = 0
    for batch in DataLoader(ds, batch_size=4):
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 64, 64)
        assert batch["emotion"].dtype == torch.int64
        for col in ("prune_at", "cfg_until", "keep", "clip_score", "label_confidence", "candidate_scores"):
            assert torch.isfinite(batch[col].float()).all(), col
        assert batch["prune_at"].eq(1.0).all() and batch["cfg_until"].eq(1.0).all() and batch["keep"].eq(3).all()
        seen += len(batch["sample_id"])
    assert seen == ds.num_rows
    # the string provenance still reruns the exact batch
    sid = next(s for s, b in zip(pq.read_table(sorted(out.glob("data/*/*.parquet")), columns=["sample_id"])
                                 .column(0).to_pylist(), table["batch"]) if len(b.split()) > 1)
    reproducer = Reproducer(out)
    assert reproducer.reproduce(reproducer.rows([sid])[sid]).identical


def test_a_folder_of_an_older_format_still_loads(demo_copy):
    """A format-5 folder (nullable face_box and speed-ups, list batch) loads with its own column types."""
    as_older_format(demo_copy, 5)
    ds = datasets.load_dataset(str(demo_copy), split="train")
    assert ds.features["batch"] == datasets.List(datasets.Value("string")) and ds[0]["face_box"] is None
    old = load(str(demo_copy), split="train", emotion="happy")
    assert old.features["face_box"] == datasets.List(datasets.Value("int32")) and old.num_rows > 0
    assert all(isinstance(b, list) for b in old["batch"]) and old.features["keep"] == datasets.Value("int32")


def test_a_grow_that_stopped_is_one_line_until_finished_or_loaded_partially(demo_copy):
    """A grow cut off after its first new shard (as kill -9 would leave it, with no writer left): load says what
    happened and what to do, partial=True loads the finished shards, and an unknown split is one line."""
    from conftest import crash_at_shard

    from facesynth.generation import GenerateConfig, generate

    with crash_at_shard(2):
        generate(GenerateConfig(recipe="emotions", out=demo_copy, num_samples=48, model="tiny", quiet=True,
                                rows_per_shard=8, batch_size=12))
    with pytest.raises(OutputError, match=r"not complete: growing from version 1.0.0 to 1.1.0 stopped after \d+ of "
                                          r"\d+ shards; run the same generate command to finish it, or pass "
                                          r"partial=True to load the finished shards"):
        load(str(demo_copy), split="train")
    with pytest.raises(OutputError, match="not complete"):
        Facesynth(data_dir=str(demo_copy))
    assert len(load(str(demo_copy), split="train", partial=True)) > 0
    with pytest.raises(OutputError, match=r"split: 'validation' is not a split of '.*' \(train\)"):
        load(str(demo_copy), split="validation", partial=True, emotion="happy")


def test_an_unknown_split_is_one_line(demo_dataset):
    with pytest.raises(OutputError, match=r"split: 'dev' is not a split of '.*' \(train, validation, test\)"):
        load(str(demo_dataset), split="dev")
