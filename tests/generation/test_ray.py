"""``generate --ray``: workers as Ray tasks on a local Ray cluster, writing to a real S3 server on 127.0.0.1.
One worker's process is killed mid-run; Ray retries its task, which resumes its own shards from the store, and
the dataset equals a single local run byte for byte."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import invoke, same_data, store_files

RUN = dict(recipe="emotions", num_samples=16, model="tiny", quiet=True, rows_per_shard=1, batch_size=1, candidates=1)


@pytest.fixture
def ray_cluster(s3):
    """A local Ray cluster started after the store's credentials and endpoint are in the environment (its
    worker processes inherit them, as a cluster's would from its own environment)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 ** 2, log_to_driver=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


def kill_worker_after_first_commit(url: str, stages: Path, index: int, killed: list[int]) -> None:
    """Wait until worker ``index`` has committed a shard to the store, then SIGKILL its process (its pid is in
    its staging folder's lock)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    part = f"{root}/.facesynth/workers/{index:05d}-of-00002.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        fs.invalidate_cache()
        locks = list(stages.glob(f"*/.facesynth/workers/{index:05d}-of-00002.lock"))
        pid = locks[0].read_text().strip() if locks else ""
        if pid.isdigit() and fs.exists(part):
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_a_killed_ray_worker_is_retried_and_the_result_equals_one_local_run(ray_cluster, s3, tmp_path):
    from facesynth.generation import GenerateConfig, generate
    from facesynth.generation.ray_executor import generate_on_ray

    import torch

    local = tmp_path / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray task of num_cpus=1 (OMP_NUM_THREADS=1): on a CPU the bits depend on it
    try:
        generate(GenerateConfig(out=local, **RUN))
    finally:
        torch.set_num_threads(threads)
    url = f"{s3}/emotions/ray"
    killed: list[int] = []
    killer = threading.Thread(target=kill_worker_after_first_commit,
                              args=(url, tmp_path / "stages", 1, killed), daemon=True)
    killer.start()
    result, done = generate_on_ray(GenerateConfig(out=url, num_workers=2, **RUN))
    killer.join(5)
    assert killed, "worker 1 was never seen committing a shard"
    again = next(d for d in done if d["worker"] == 1)
    assert again["pid"] != killed[0]  # the retried task ran in a new process ...
    assert again["shards_skipped"] >= 1  # ... and kept what the killed one had committed
    assert result.rows == 16 and sum(d["rows"] for d in done) == 16
    same_data(store_files(url), local)  # no duplicate or missing rows: the same bytes as one local run


def test_ray_options_are_one_line_before_ray_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as where Ray is not installed
    code = invoke(["generate", "emotions", "--model", "tiny", "--out", str(tmp_path / "o"), "--ray",
                   "--worker-index", "0", "--num-workers", "2"])
    out = capsys.readouterr().err
    assert code == 2 and out.strip().splitlines() == [
        "Error: --worker-index: not with --ray (Ray runs every worker; give --num-workers)"]
    code = invoke(["generate", "emotions", "--model", "tiny", "-n", "32", "--out", str(tmp_path / "o"), "--ray"])
    out = capsys.readouterr().err
    assert code == 2 and out.strip().splitlines() == ["Error: --ray: Ray is not installed; pip install 'facesynth[ray]'"]
    code = invoke(["generate", "emotions", "--model", "tiny", "-n", "32", "--out", str(tmp_path / "o"), "--ray",
                   "--num-workers", "0"])
    out = capsys.readouterr().err
    assert code == 2 and out.strip().splitlines() == ["Error: --num-workers: must be at least 1"]
    code = invoke(["generate", "no-such-recipe", "--model", "tiny", "--out", str(tmp_path / "o"), "--ray"])
    out = capsys.readouterr().err
    assert code == 2 and "no-such-recipe" in out and len(out.strip().splitlines()) == 1  # the recipe, before Ray
    assert not (tmp_path / "o").exists()
