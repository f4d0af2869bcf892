"""A real checkpoint on a real GPU. Skipped unless CUDA and the model are available locally."""

import os

import pytest
import torch

MODEL = os.environ.get("FACESYNTH_TEST_MODEL", "stable-diffusion-v1-5/stable-diffusion-v1-5")


def _model_available() -> bool:
    if os.path.isdir(MODEL):
        return True
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(MODEL, local_files_only=True, allow_patterns=["model_index.json"])
        return True
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not _model_available(), reason=f"needs {MODEL} in the local cache")
def test_real_checkpoint_generates_a_loadable_dataset(tmp_path):
    import datasets

    from facesynth.generation import GenerateConfig, generate

    out = tmp_path / "real"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=8, model=MODEL, steps=10, quiet=True))
    ds = datasets.load_dataset(str(out), split="train")
    assert ds[0]["image"].size == (512, 512)
    assert min(ds["clip_score"]) > 10  # a real CLIP finds the face in the caption


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not _model_available(), reason=f"needs {MODEL} in the local cache")
def test_real_checkpoint_passes_the_face_gate(tmp_path):
    pytest.importorskip("cv2", reason="the faces extra is not installed")
    import datasets

    from facesynth.generation import GenerateConfig, generate

    out = tmp_path / "faces"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=8, model=MODEL, steps=20, quiet=True,
                            faces=True, safety=True))
    ds = datasets.load_dataset(str(out))
    rows = [row for split in ds.values() for row in split]
    assert len(rows) == 8
    for row in rows:
        x, y, w, h = row["face_box"]
        assert w >= 0.2 * 512 * 0.9 and 0 <= x and x + w <= 512 and 0 <= y and y + h <= 512
        assert row["safety_score"] <= 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not _model_available(), reason=f"needs {MODEL} in the local cache")
def test_real_checkpoint_pruned_agrees_with_exact_best_of_n():
    """Pruning on the real model: half the UNet work or less, and a kept winner close to exact best-of-N."""
    from facesynth.generation.agreement import benchmark
    from facesynth.generation import GenerateConfig

    result = benchmark(GenerateConfig(recipe="emotions", out=".", num_samples=24, model=MODEL, steps=25,
                                      prune_at=0.3, keep=1, cfg_until=0.6))
    assert result.pruned.unet_per_image <= 0.5 * result.exact.unet_per_image
    assert result.same_winner >= 0.5  # early previews of a real model predict the final ranking
    assert result.pruned.mean_score >= 0.95 * result.exact.mean_score
