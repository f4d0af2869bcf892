"""What writing to object storage costs, against a real S3 server on 127.0.0.1 (moto, in a
process of its own).

    python benchmarks/bench_store.py                 # 100 shards, then a merge of 10,000 shards' parts
    python benchmarks/bench_store.py --samples 400 --rows-per-shard 4   # 100 shards of 4 rows

1. **Upload share**: the tiny preset makes ``--samples`` rows of ``emotions`` (best-of-1, ``--rows-per-shard``
   rows a shard, default 1: the worst case for per-shard overhead) into a local folder and into ``s3://``,
   alternated, twice each; the faster wall times, and the time the s3 run spent in store calls (listing at the
   start, each shard and its commit, the card at the end).
2. **Merge memory**: ``--parts`` shard records spread over 100 workers' manifests in the store, merged with
   ``facesynth merge URL --no-card`` (no shard is read); the merge's peak resident memory, in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MERGE = """
import resource, sys, time
from facesynth.generation.remote import merge_remote
start = time.perf_counter()
done = merge_remote(sys.argv[1], card=False)
print(done["shards"], time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def upload_share(samples: int, rows: int) -> None:
    from facesynth.folder import store
    from facesynth.generation import GenerateConfig, generate

    spent = {"store": 0.0, "calls": 0}

    def timed(fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["store"] += time.perf_counter() - start
                spent["calls"] += 1
        return wrapper

    for name in ("read_bytes", "write_bytes", "upload", "download", "listing", "size"):
        setattr(store.Store, name, timed(getattr(store.Store, name)))
    walls: dict[str, list[float]] = {"local": [], "s3": []}
    for rep in range(2):  # alternated, the faster of two each: the machine is shared
        for kind in ("local", "s3"):
            out = f"s3://bench/upload{rep}" if kind == "s3" else os.path.join(tempfile.mkdtemp(), "local")
            before = spent["store"]
            start = time.perf_counter()
            result = generate(GenerateConfig(recipe="emotions", out=out, num_samples=samples, model="tiny",
                                             quiet=True, rows_per_shard=rows, candidates=1))
            walls[kind].append(time.perf_counter() - start)
            if kind == "s3":
                in_store = spent["store"] - before
    local, remote = min(walls["local"]), min(walls["s3"])
    print(f"{result.shards_written} shards, {result.rows} rows: local {local:.1f} s, s3 {remote:.1f} s wall "
          f"(+{100 * (remote - local) / local:.1f}%); the last s3 run spent {in_store:.2f} s in store calls "
          f"({100 * in_store / remote:.1f}% of its wall time; uploads run on the writer thread, beside generation)")


def merge_memory(parts: int, work: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("s3")
    manifest = json.loads(fs.cat_file("bench/upload0/manifest.json"))
    record = next(iter(manifest["shards"].values()))
    workers = 100
    names = [f"data/x/train-{i:05d}.parquet" for i in range(parts)]
    base = {k: v for k, v in manifest.items() if k not in ("shards", "workers")}
    base.update(layout=names, complete=True)
    for w in range(workers):
        part = {**base, "shards": {n: record for n in names[w::workers]}}
        fs.pipe_file(f"bench/merge/.facesynth/workers/{w:05d}-of-{workers:05d}.json", json.dumps(part).encode())
    done = subprocess.run([sys.executable, "-c", MERGE, "s3://bench/merge"], capture_output=True, text=True,
                          check=True)
    shards, seconds, peak = done.stdout.split()
    print(f"merge of {shards} shards' records from {workers} workers' manifests: {float(seconds):.1f} s, "
          f"peak RSS {float(peak):.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rows-per-shard", type=int, default=1)
    parser.add_argument("--parts", type=int, default=10_000)
    args = parser.parse_args()
    import socket

    with socket.socket() as s:  # a free port for the server, in its own process (not competing for the GIL)
        s.bind(("127.0.0.1", 0))
        host, port = s.getsockname()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection((host, port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=f"http://{host}:{port}", FACESYNTH_STAGE=str(Path(tmp) / "stages"))
        import fsspec

        fsspec.filesystem("s3").mkdir("bench")
        upload_share(args.samples, args.rows_per_shard)
        merge_memory(args.parts, Path(tmp))
    server.terminate()


if __name__ == "__main__":
    main()
