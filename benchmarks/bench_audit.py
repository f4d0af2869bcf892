"""What ``facesynth audit`` costs: time and peak memory at 1,000 and 10,000 rows, on the tiny preset.

    python benchmarks/bench_audit.py                    # 1,000 and 10,000 rows
    python benchmarks/bench_audit.py --rows 10000 50000

The data is the audit tests' cue dataset (48 tiny-preset rows as gender pairs, painted with a cue per emotion
and gender) with its 24 test rows copied until the split holds the rows asked for (each copy its own sample ids
and identities), in shards of 1,000; the classifier is the tests' tiny ViT trained on the cues. Each audit runs
in a fresh process (bootstrap 1,000 rounds, counterfactual figures on), which reports its wall time and peak
resident memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "audit"))

import cues  # noqa: E402  (the audit tests' cue dataset and classifier)

CHILD = """
import json, resource, sys, time
from facesynth.audit import audit
start = time.perf_counter()
result = audit(sys.argv[1], sys.argv[2], out=sys.argv[3], progress=False)
print(json.dumps({"rows": result["data"]["rows"], "seconds": time.perf_counter() - start,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = cues.make(work)
        model = cues.classifier(work / "clf", biased=True)
        print(f"{'rows':>7s} {'seconds':>8s} {'rows/s':>7s} {'peak MB':>8s}")
        for rows in args.rows:
            data = cues.replicate(root, work / f"rows{rows}", rows)
            done = subprocess.run([sys.executable, "-c", CHILD, str(data), str(model), str(work / f"report{rows}")],
                                  capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.splitlines()[-1])
            print(f"{r['rows']:7d} {r['seconds']:8.1f} {r['rows'] / r['seconds']:7.0f} {r['peak_mb']:8.0f}")


if __name__ == "__main__":
    main()
