"""Several processes share one folder: torchrun ranks, or independent workers and ``facesynth merge``."""

import json
import os
import subprocess
import sys

import pytest
import torch

from facesynth.cli import main
from facesynth.errors import OutputError
from facesynth.folder.state import merge
from facesynth.generation import GenerateConfig, generate
from facesynth.validate import validate

DEMO = dict(recipe="emotions", num_samples=24, model="tiny", quiet=True, rows_per_shard=8, batch_size=12)


def shard_sums(root):
    return {n: r["sha256"] for n, r in json.loads((root / "manifest.json").read_text())["shards"].items()}


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path, demo_dataset):
    out = tmp_path / "ranks"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "facesynth.cli", "generate", "emotions", "--model", "tiny", "-n", "24", "--rows-per-shard", "8",
         "--batch-size", "12", "-o", str(out), "-q"],
        capture_output=True, text=True, timeout=600,
        # torchrun gives each process 1 CPU thread unless told; on CPU, kernels round by thread count
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert proc.returncode == 0, proc.stderr
    assert "worker 0 of 2" in proc.stdout and "worker 1 of 2" in proc.stdout
    parts = sorted(p.name for p in (out / ".facesynth" / "workers").iterdir())
    assert parts == ["00000-of-00002.json", "00001-of-00002.json"]
    assert shard_sums(out) == shard_sums(demo_dataset)  # same rows, same pixels, same bytes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["workers"] == 2
    assert (out / "README.md").exists()
    assert validate(out).ok


@pytest.mark.slow
def test_independent_workers_rerun_alone_and_merge(tmp_path, demo_dataset, capsys):
    out = tmp_path / "array"
    first = generate(GenerateConfig(out=out, worker_index=0, num_workers=2, **DEMO))
    assert not first.merged and first.shards_written == 6  # shards 0, 2, ..., 10 of 12
    assert not (out / "manifest.json").exists() and not (out / "README.md").exists()
    with pytest.raises(OutputError, match=r"worker\(s\) 1 of 2 have not finished; run them again"):
        merge(out)
    # worker 1 dies after its first shard: only its own part is redone, worker 0's stays untouched
    crash = {"n": 0}
    from facesynth.generation import runner

    real_finish = runner.ShardSink._finish

    def dies_after_one(self):
        real_finish(self)
        crash["n"] += 1
        if crash["n"] == 1:
            raise RuntimeError("node lost")

    runner.ShardSink._finish = dies_after_one
    try:
        with pytest.raises(RuntimeError, match="node lost"):
            generate(GenerateConfig(out=out, worker_index=1, num_workers=2, **DEMO))
    finally:
        runner.ShardSink._finish = real_finish
    before = {p: p.stat().st_mtime_ns for p in (out / "data").glob("*/*.parquet")}
    again = generate(GenerateConfig(out=out, worker_index=1, num_workers=2, write_card=False, **DEMO))
    assert (again.shards_written, again.shards_skipped) == (5, 1) and again.merged  # the last worker merges
    after = {p: p.stat().st_mtime_ns for p in (out / "data").glob("*/*.parquet")}
    assert all(after[n] == t for n, t in before.items())
    assert shard_sums(out) == shard_sums(demo_dataset)
    with pytest.raises(SystemExit) as exit_info:
        main.main(args=["merge", str(out)], prog_name="facesynth")  # explicit merge: idempotent, writes the card
    assert exit_info.value.code == 0
    assert f"{out}: merged 2 workers, 12 shards" in capsys.readouterr().out
    assert validate(out).ok


@pytest.mark.slow
def test_workers_of_a_run_with_other_parameters_are_refused(tmp_path):
    out = tmp_path / "mixed"
    generate(GenerateConfig(out=out, worker_index=0, num_workers=2, **DEMO))
    with pytest.raises(OutputError, match="different seed"):
        generate(GenerateConfig(out=out, worker_index=0, num_workers=2, **{**DEMO, "seed": 5}))


@pytest.mark.slow
def test_a_worker_with_other_parameters_is_refused_at_once_and_the_right_one_then_works(tmp_path, demo_dataset):
    """Worker 0 of a run finished; worker 1 started with another seed is refused in one line before it writes
    anything, and worker 1 with the right command then finishes and merges the single-process dataset."""
    out = tmp_path / "split"
    generate(GenerateConfig(out=out, worker_index=0, num_workers=2, **DEMO))
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(OutputError) as refused:
        generate(GenerateConfig(out=out, worker_index=1, num_workers=2, **{**DEMO, "seed": 5}))
    assert str(refused.value) == (f"--out: '{out}' holds the manifest of worker 0 of 2 of a run with different "
                                  "seed; start every worker with that run's command (each resumes its own shards), "
                                  "or use another folder (nothing was changed)")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    result = generate(GenerateConfig(out=out, worker_index=1, num_workers=2, **DEMO))
    assert result.merged and shard_sums(out) == shard_sums(demo_dataset)


def test_idle_workers_are_named_at_the_start_with_the_size_that_gives_every_worker_work(tmp_path, caplog):
    import re

    from facesynth.generation.shards import GROUP_CALLS
    from facesynth.plan.layout import batch_groups, layout
    from facesynth.plan import Plan
    from facesynth.recipe import load_recipe
    from facesynth.folder.writer import rows_per_shard

    with caplog.at_level("WARNING"):
        result = generate(GenerateConfig(recipe="emotions", out=tmp_path / "w", num_samples=32, model="tiny",
                                         quiet=True, worker_index=1, num_workers=2))
    assert result.rows == 0
    found = re.search(r"worker 1 of 2: 32 rows make 1 group\(s\) of shards for 2 workers, so worker 1 will have "
                      r"nothing to make \(this one among them\); every worker gets work from (\d+) rows", caplog.text)
    assert found, caplog.text
    size, recipe = int(found[1]), load_recipe("emotions")
    per_shard = rows_per_shard(64, 64)  # the tiny model's images
    limit = min(per_shard, GROUP_CALLS * 4)  # calls of 12 // 3 samples

    def groups(n):
        return len(batch_groups(layout(Plan(recipe, n), per_shard), per_shard, limit))
    assert groups(size) >= 2 and groups(size - 1) < 2
