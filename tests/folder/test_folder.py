"""The user's files are sacred: what facesynth accepts as an output folder, what --overwrite deletes,
and one writer per folder (a lock), tested with real files and real processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import as_older_format

from facesynth.builder import load
from facesynth.errors import OutputError
from facesynth.folder.files import atomic_write, load_json
from facesynth.generation import GenerateConfig, generate
from facesynth.folder.lock import FolderBusy, FolderLock
from facesynth.validate import validate
from facesynth.folder.writer import FORMAT_VERSION

TINY = dict(recipe="emotions", model="tiny", quiet=True)


def listing(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a folder)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "facesynth", *args], capture_output=True, text=True, cwd=cwd)


def users_folder(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "assets").mkdir()
    (root / "README.md").write_text("# my project\n")
    (root / "data" / "important.csv").write_text("a,b\n1,2\n")
    (root / "assets" / "logo.png").write_bytes(b"\x89PNG mine")
    return root


@pytest.mark.slow
def test_overwrite_never_deletes_a_folder_that_is_not_a_dataset(tmp_path):
    root = users_folder(tmp_path / "mine")
    before = listing(root)
    proc = cli("generate", "emotions", "--model", "tiny", "-n", "4", "--out", str(root), "--overwrite")
    assert proc.returncode == 2
    assert proc.stderr == (f"Error: --out: '{root}' is not empty (README.md, assets, data) and holds no facesynth "
                           "manifest; use an empty folder (nothing was changed)\n")
    assert listing(root) == before


@pytest.mark.slow
def test_out_dot_with_overwrite_inside_a_git_repo_changes_nothing(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "README.md").write_text("# the repo\n")
    before = listing(repo)
    proc = cli("generate", "emotions", "--model", "tiny", "-n", "4", "--out", ".", "--overwrite", cwd=repo)
    assert proc.returncode == 2 and "holds no facesynth manifest" in proc.stderr
    assert listing(repo) == before


@pytest.mark.parametrize("content", ["README.md", "data/", "assets/", "data/x.parquet", ".hidden"])
def test_only_an_empty_folder_or_a_dataset_is_accepted(tmp_path, content):
    root = tmp_path / "out"
    target = root / content
    if content.endswith("/"):
        target.mkdir(parents=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("the user's")
    before = listing(root)
    with pytest.raises(OutputError, match=r"is not empty \(.*\) and holds no facesynth manifest"):
        generate(GenerateConfig(out=root, num_samples=4, **TINY))
    assert listing(root) == before


@pytest.mark.slow
def test_overwrite_of_a_dataset_deletes_only_what_its_manifest_lists(tmp_path):
    root = tmp_path / "ds"
    generate(GenerateConfig(out=root, num_samples=8, rows_per_shard=4, **TINY))
    old = load_json(root / "manifest.json")
    assert set(old["files"]) == {"README.md", "assets/samples.png"}  # the card and grid are listed
    (root / "data" / "important.csv").write_text("keep me")
    (root / "assets" / "logo.png").write_bytes(b"keep me too")
    (root / "notes.txt").write_text("and me")
    mine = {k: v for k, v in listing(root).items() if k in ("data/important.csv", "assets/logo.png", "notes.txt")}

    # a model that cannot load: checked first, so nothing is deleted
    before = listing(root)
    with pytest.raises(Exception, match="--model: cannot load"):
        generate(GenerateConfig(out=root, num_samples=8, rows_per_shard=4, overwrite=True,
                                **{**TINY, "model": "nobody/none"}))
    assert listing(root) == before

    result = generate(GenerateConfig(out=root, num_samples=4, seed=5, rows_per_shard=4, overwrite=True, **TINY))
    assert result.shards_written == len(load_json(root / "manifest.json")["layout"])
    new = load_json(root / "manifest.json")
    assert new["plan"]["seed"] == 5 and new["version"] == "1.0.0"
    assert {k: v for k, v in listing(root).items() if k in mine} == mine  # the user's files, byte for byte
    stale = set(old["shards"]) - set(new["shards"])
    assert stale and not any((root / name).exists() for name in stale)
    assert not (root / ".facesynth").exists()


@pytest.mark.slow
def test_a_failed_model_load_leaves_nothing_behind(tmp_path):
    root = tmp_path / "new"
    proc = cli("generate", "emotions", "--model", "nobody/none", "-n", "4", "--out", str(root))
    assert proc.returncode == 2 and "--model: cannot load" in proc.stderr
    assert not root.exists()


def test_a_finished_dataset_keeps_no_work_folder(demo_dataset):
    assert not (demo_dataset / ".facesynth").exists()


# The lock ---------------------------------------------------------------------------------
def test_one_writer_per_folder_and_the_refusal_names_the_holder(tmp_path):
    with FolderLock(tmp_path / "a"):
        with pytest.raises(FolderBusy) as err:
            FolderLock(tmp_path / "a", "DIRECTORY").acquire()
        assert str(err.value) == (f"DIRECTORY: '{tmp_path / 'a'}' is being written by another facesynth process "
                                  f"(pid {os.getpid()}); wait for it to finish, or use another folder")
        with pytest.raises(FolderBusy):  # a worker cannot join a lone run either
            FolderLock(tmp_path / "a", worker_index=0, worker_count=2, run_key="x").acquire()
    FolderLock(tmp_path / "a").acquire().release()  # released: free again
    assert not (tmp_path / "a" / ".facesynth").exists()


def test_workers_of_one_run_share_the_folder_but_nobody_else_does(tmp_path):
    root = tmp_path / "w"
    first = FolderLock(root, worker_index=0, worker_count=2, run_key="abc").acquire()
    second = FolderLock(root, worker_index=1, worker_count=2, run_key="abc").acquire()
    with pytest.raises(FolderBusy, match="worker 0 of 2 is already running"):
        FolderLock(root, worker_index=0, worker_count=2, run_key="abc").acquire()
    with pytest.raises(FolderBusy, match="workers of a run with other parameters"):
        FolderLock(root, worker_index=0, worker_count=2, run_key="other").acquire()
    with pytest.raises(FolderBusy, match=rf"another facesynth process \(pid {os.getpid()}, {os.getpid()}\)"):
        FolderLock(root).acquire()
    first.release()
    second.release()
    FolderLock(root).acquire().release()


def test_workers_starting_at_once_both_make_the_folders(tmp_path, monkeypatch):
    """Two workers that both find the work folders missing: the later mkdir loses the race, harmlessly
    (torchrun starts its processes together; this failed as 'cannot create ...: File exists')."""
    root = tmp_path / "w"
    first = FolderLock(root, worker_index=0, worker_count=2, run_key="abc").acquire()
    monkeypatch.setattr(Path, "exists", lambda self: False)  # as if the first had not made them yet
    second = FolderLock(root, worker_index=1, worker_count=2, run_key="abc").acquire()
    monkeypatch.undo()
    second.release()  # the folders are the first worker's: the second leaves them
    assert (root / ".facesynth").is_dir()
    first.release()


def test_a_killed_holder_never_leaves_a_stale_lock(tmp_path):
    root = tmp_path / "k"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from facesynth.folder.lock import FolderLock;"
                               "FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
                               str(root)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderBusy, match=f"pid {holder.pid}"):
        FolderLock(root).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    FolderLock(root).acquire().release()


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "facesynth", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_real_runs_on_one_folder_the_second_is_refused(tmp_path):
    out = tmp_path / "shared"
    first = _start(["generate", "emotions", "--model", "tiny", "-n", "48", "--rows-per-shard", "8", "-o", str(out),
                    "-q"])
    _wait_for(out / ".facesynth" / "lock", first)
    for args in (["generate", "emotions", "--model", "tiny", "-n", "48", "--rows-per-shard", "8", "-o", str(out),
                  "-q"],  # the same command
                 ["generate", "emotions", "--model", "tiny", "-n", "32", "--rows-per-shard", "8", "-o", str(out),
                  "-q"],  # another size
                 ["card", str(out)], ["merge", str(out)]):
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        what = "--out" if args[0] == "generate" else "DIRECTORY"
        assert proc.stderr == (f"Error: {what}: '{out}' is being written by another facesynth process "
                               f"(pid {first.pid}); wait for it to finish, or use another folder\n"), args
    assert first.wait(timeout=600) == 0, first.stderr.read()
    report = validate(out)
    assert report.ok and report.rows == 48, [str(p) for p in report.problems]
    manifest = load_json(out / "manifest.json")
    assert all(r["bytes"] > 0 for r in manifest["shards"].values())


@pytest.mark.slow
def test_two_card_runs_at_once_never_collide(demo_dataset, tmp_path):
    root = tmp_path / "cards"
    shutil.copytree(demo_dataset, root)
    procs = [_start(["card", str(root)]) for _ in range(3)]
    codes = [p.wait(timeout=300) for p in procs]
    errors = [p.stderr.read() for p in procs]
    assert set(codes) <= {0, 2} and 0 in codes, errors
    assert all("is being written by another facesynth process" in e for c, e in zip(codes, errors) if c == 2)
    assert validate(root).ok
    assert not [p for p in root.rglob(".*") if p.name.endswith(".tmp")]


def test_atomic_writes_from_many_threads_use_unique_temp_names(tmp_path):
    target = tmp_path / "same.json"
    errors = []

    def write(i):
        try:
            for _ in range(20):
                with atomic_write(target) as f:
                    f.write(json.dumps({"writer": i}))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(target.read_text())["writer"] in range(8)
    assert [p.name for p in tmp_path.iterdir()] == ["same.json"]


def test_manifests_are_strict_json(demo_dataset, tmp_path, capsys):
    from facesynth.cli import main

    root = tmp_path / "nan"
    shutil.copytree(demo_dataset, root)
    text = (root / "manifest.json").read_text().replace('"complete": true', '"complete": NaN')
    (root / "manifest.json").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main.main(args=["validate", str(root)], prog_name="facesynth")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"Error: '{root / 'manifest.json'}': not a valid manifest "
                                       "(NaN is not valid JSON)\n")
    from facesynth.folder.files import write_json_atomic

    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json_atomic(tmp_path / "x.json", {"guidance": float("nan")})
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_a_folder_made_by_another_format_still_loads_and_is_named_one_line(demo_dataset, tmp_path):
    import datasets

    root = tmp_path / "old"
    shutil.copytree(demo_dataset, root)
    as_older_format(root, 3)
    before = listing(root)
    line = (f"'{root}': made by another facesynth version (manifest format 3; this version's is {FORMAT_VERSION}), "
            "whose plan, layout or columns differ; it still loads with load_dataset, and the same generate command with --overwrite "
            "remakes it in this version's layout")
    for args, prefix in ((["validate", str(root)], ""), (["card", str(root)], ""),
                         (["reproduce", str(root), "emotions-0000001"], ""),
                         (["generate", "emotions", "--model", "tiny", "-n", "24", "--rows-per-shard", "8",
                           "-o", str(root)], "--out: ")):
        proc = cli(*args)
        assert (proc.returncode, proc.stderr) == (2, f"Error: {prefix}{line}\n"), args
    assert listing(root) == before
    assert sum(len(d) for d in datasets.load_dataset(str(root)).values()) == 24
    old = load(str(root), split="train")  # the builder declares only the columns format 3 had
    assert "prune_at" not in old.features and "seed" in old.features and len(old)


@pytest.mark.slow
def test_another_programs_manifest_json_does_not_make_a_folder_a_dataset(tmp_path):
    """A web app's folder with its own manifest.json is someone's files: refused, with or without --overwrite."""
    root = tmp_path / "webapp"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"name": "My App", "start_url": "/", "icons": []}))
    (root / "index.html").write_text("<html></html>")
    before = listing(root)
    for extra in ([], ["--overwrite"]):
        proc = cli("generate", "emotions", "--model", "tiny", "-n", "4", "--out", str(root), *extra)
        assert proc.returncode == 2
        assert proc.stderr == (f"Error: --out: '{root}' is not empty (index.html, manifest.json) and holds no "
                               "facesynth manifest; use an empty folder (nothing was changed)\n")
        assert listing(root) == before
    proc = cli("validate", str(root))
    assert proc.returncode == 2 and proc.stderr == (
        f"Error: '{root / 'manifest.json'}': not a facesynth manifest (another program's file?); is this a "
        "facesynth dataset folder?\n")


@pytest.mark.slow
def test_files_facesynth_writes_follow_the_umask(tmp_path):
    """manifest.json, the card and the grid get 0666 less the umask, like the shards (mkstemp alone gives 0600)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = tmp_path / "shared"
        proc = cli("generate", "emotions", "--model", "tiny", "-n", "4", "--out", str(out), "-q")
        assert proc.returncode == 0, proc.stderr
        modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
        assert set(modes.values()) == {0o644}, modes
        os.umask(0o077)
        from facesynth.folder.files import write_json_atomic

        write_json_atomic(out / "private.json", {})
        assert stat.S_IMODE((out / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
