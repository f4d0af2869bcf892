"""Kill ``facesynth generate`` with SIGKILL at random moments, resume each time, compare.

After every kill the folder must hold only complete, checksummed shards; after the
last resume it must equal an uninterrupted run shard for shard (same sha256, so the
same rows, pixels and order), with nothing lost or duplicated.

    python scripts/kill_resume.py --kills 10 --num-samples 48 --work /tmp/killtest

The test suite runs a bounded version of this (tests/generation/test_crash.py).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq


@dataclass
class KillLog:
    kills: list[tuple[int, float]] = field(default_factory=list)  # (shards finished, seconds after)
    shards_after_kill: list[int] = field(default_factory=list)
    resumes: int = 0


def generate_args(out: Path, num_samples: int, rows_per_shard: int) -> list[str]:
    return [sys.executable, "-m", "facesynth.cli", "generate", "emotions", "--model", "tiny",
            "--num-samples", str(num_samples), "--rows-per-shard", str(rows_per_shard), "--batch-size", "12",
            "--out", str(out), "--quiet"]


def check_folder(out: Path) -> int:
    """Every recorded shard is whole and matches its checksum; data/ holds no partial file."""
    from facesynth.folder.state import check_shards
    from facesynth.folder.writer import Manifest

    manifest = Manifest.load(out)
    if manifest is None:
        assert not (out / "data").exists() or not any((out / "data").iterdir()), "shards without a manifest"
        return 0
    damaged = check_shards(out, manifest, list(manifest.shards))
    assert not damaged, f"damaged after a kill: {damaged}"
    for path in (out / "data").glob("*/*"):
        pq.read_metadata(path)  # a file in data/ is always a complete Parquet file
    return len(manifest.shards)


def shard_sums(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {name: rec["sha256"] for name, rec in manifest["shards"].items()}


def run_and_kill(args: list[str], out: Path, min_shards: int, delay: float, sig: int = signal.SIGKILL,
                 timeout: float = 600) -> tuple[bool, subprocess.Popen]:
    """Start ``args``; once ``out`` records ``min_shards`` finished shards, wait ``delay`` s and send ``sig``.

    Returns whether the signal was sent (False: the run finished first), and the process.
    """
    # a shell's background job ignores SIGINT, and children inherit that: give Ctrl-C back its default
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _recorded(out) >= min_shards:
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(sig)
                proc.wait()
                return True, proc
            break
        time.sleep(0.02)
    proc.wait()
    return False, proc


def _recorded(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def kill_and_resume(out: Path, num_samples: int, rows_per_shard: int, kills: list[tuple[int, float]]) -> KillLog:
    """For each ``(min_shards, delay)``: run, SIGKILL at that moment, check the folder; then finish."""
    log = KillLog()
    args = generate_args(out, num_samples, rows_per_shard)
    for min_shards, delay in kills:
        killed, proc = run_and_kill(args, out, min_shards, delay)
        if killed:
            log.kills.append((min_shards, round(delay, 2)))
        else:
            assert proc.returncode == 0, proc.stderr.read()
        log.resumes += 1
        log.shards_after_kill.append(check_folder(out))
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return log


def _layout(num_samples: int, rows_per_shard: int):
    from facesynth.plan.layout import layout
    from facesynth.plan import Plan
    from facesynth.recipe import load_recipe

    return layout(Plan(load_recipe("emotions"), num_samples, None, 3), rows_per_shard)


def random_kills(count: int, shards: int, per_shard: float, seed: int) -> list[tuple[int, float]]:
    """Moments spread over the whole run: after a random number of shards, a random part of a shard's time."""
    rng = random.Random(seed)
    return sorted((rng.randrange(shards), rng.uniform(0, per_shard)) for _ in range(count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=96)
    parser.add_argument("--rows-per-shard", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("kill-resume-work"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    reference, killed = args.work / "reference", args.work / "killed"
    start = time.perf_counter()
    subprocess.run(generate_args(reference, args.num_samples, args.rows_per_shard), check=True,
                   stdout=subprocess.DEVNULL)
    took = time.perf_counter() - start
    shards = len(_layout(args.num_samples, args.rows_per_shard))
    print(f"uninterrupted run: {took:.1f} s, {shards} shards")
    kills = random_kills(args.kills, shards, took / shards, args.seed)
    log = kill_and_resume(killed, args.num_samples, args.rows_per_shard, kills)
    same = shard_sums(reference) == shard_sums(killed)
    print(f"{len(log.kills)} kills at (shards done, +seconds) {log.kills}; shards kept after each: "
          f"{log.shards_after_kill}")
    print(f"final dataset identical to the uninterrupted run (every shard's sha256): {same}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
