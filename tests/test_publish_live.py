"""The real Hub: runs only with HF_TOKEN and FACESYNTH_LIVE_HUB=1 (never in CI).

Pushes a tiny dataset to a new private repo with a tag, loads it back at that tag
with ``load_dataset``, and deletes the repo. Runs in subprocesses, outside the
suite's offline guard.
"""

import os
import subprocess
import sys
import uuid

import pytest

LIVE = os.environ.get("FACESYNTH_LIVE_HUB") == "1" and bool(os.environ.get("HF_TOKEN"))


@pytest.mark.skipif(not LIVE, reason="set HF_TOKEN and FACESYNTH_LIVE_HUB=1 to push to the real Hub")
def test_push_tag_and_load_back(demo_dataset):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                              "TRANSFORMERS_OFFLINE")}
    user = subprocess.run([sys.executable, "-c", "from huggingface_hub import HfApi; print(HfApi().whoami()['name'])"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    repo = f"{user}/facesynth-live-{uuid.uuid4().hex[:8]}"
    try:
        push = subprocess.run([sys.executable, "-m", "facesynth.cli", "push", str(demo_dataset), "--repo-id", repo,
                               "--private", "--tag", "v1.0.0"], env=env, capture_output=True, text=True)
        assert push.returncode == 0, push.stderr
        assert os.environ["HF_TOKEN"] not in push.stdout + push.stderr
        load = subprocess.run([sys.executable, "-c",
                               "import sys, datasets; ds = datasets.load_dataset(sys.argv[1], revision='v1.0.0');"
                               "print(sum(len(d) for d in ds.values()))", repo],
                              env=env, capture_output=True, text=True)
        assert load.returncode == 0, load.stderr
        assert load.stdout.strip().splitlines()[-1] == "24"
    finally:
        subprocess.run([sys.executable, "-c", "import sys; from huggingface_hub import HfApi;"
                        "HfApi().delete_repo(sys.argv[1], repo_type='dataset', missing_ok=True)", repo], env=env)
