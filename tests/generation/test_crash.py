"""Crash safety: SIGKILL and SIGINT at chosen moments, then resume; the result equals an uninterrupted run.

A bounded run of scripts/kill_resume.py (which kills at random moments, as many times as asked).
"""

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kill_resume.py"


@pytest.fixture(scope="module")
def kill_resume():
    spec = importlib.util.spec_from_file_location("kill_resume", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_resume"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sigkill_and_sigint_then_resume_equals_an_uninterrupted_run(tmp_path, demo_dataset, kill_resume):
    out = tmp_path / "killed"
    args = kill_resume.generate_args(out, 24, 8)  # the demo_dataset fixture's parameters
    kept = []
    for min_shards, delay in [(0, 1.0), (1, 0.2)]:  # during start-up, then in the middle of a shard
        killed, proc = kill_resume.run_and_kill(args, out, min_shards, delay)
        assert killed, "the run finished before the kill"
        assert proc.returncode == -signal.SIGKILL
        kept.append(kill_resume.check_folder(out))  # only whole, checksummed shards
    assert not (out / "data").exists() or all(p.suffix == ".parquet" for p in (out / "data").glob("*/*"))

    # small shards are written a group at a time (layout.batch_groups): wait for one more than were kept
    interrupted, proc = kill_resume.run_and_kill(args, out, kept[-1] + 1, 0.0, sig=signal.SIGINT)
    assert interrupted and proc.returncode == 130
    err = proc.stderr.read()
    assert err.strip().splitlines()[-1].startswith("Error: interrupted: finished shards are kept")
    assert "Traceback" not in err
    after_sigint = kill_resume.check_folder(out)
    assert after_sigint > kept[-1]
    assert not any((out / ".facesynth" / "tmp").rglob("*.parquet"))  # the shard in progress was dropped

    # SIGTERM (what Slurm and Kubernetes send) behaves like Ctrl-C
    terminated, proc = kill_resume.run_and_kill(args, out, after_sigint + 1, 0.0, sig=signal.SIGTERM)
    assert terminated and proc.returncode == 143
    err = proc.stderr.read()
    assert err.strip().splitlines()[-1] == ("Error: terminated (SIGTERM): finished shards are kept; run the same "
                                            "command again to resume")
    assert "Traceback" not in err
    assert kill_resume.check_folder(out) > after_sigint
    assert not any((out / ".facesynth" / "tmp").rglob("*.parquet"))

    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert kill_resume.shard_sums(out) == kill_resume.shard_sums(demo_dataset)  # same bytes, shard for shard
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and sum(r["rows"] for r in manifest["shards"].values()) == 24
