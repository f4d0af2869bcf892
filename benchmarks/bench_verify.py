"""What verifiers cost (``--verify``), in one process.

    python benchmarks/bench_verify.py                 # both parts
    python benchmarks/bench_verify.py --skip-sizes    # only the tiny end-to-end part

1. **Tiny preset, end to end**: the same 24-sample ``emotions`` run without a verifier, with a tiny random
   ViT classifier in ``record`` mode and in ``gate`` mode; seconds per stage of the engine, per kept image,
   and the verifier's share of the engine's time.
2. **Real architecture sizes, random weights** (no download): one forward of a ViT-B/16 image classifier
   (transformers' default ``ViTConfig``, 224x224) per candidate against the UNet evaluations of an
   SD 1.5-sized ``UNet2DConditionModel`` (64x64 latents, 768-d text, classifier-free guidance: a batch of 2)
   for 25 steps, per kept image of best-of-3. On a GPU the ratio is what matters; here it is the CPU's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import tiny_classifier, tiny_images  # noqa: E402  (the tests' tiny classifier)

from facesynth.generation import GenerateConfig, generate  # noqa: E402

STAGES = ("text", "unet", "vae", "clip", "verify")


def end_to_end(work: Path, samples: int) -> None:
    base = work / "plain"
    generate(GenerateConfig(recipe="emotions", out=base, num_samples=samples, model="tiny", quiet=True))
    classifier = tiny_classifier(work / "vit", scale=1.0, calibration=tiny_images(base))
    shutil.rmtree(base)
    print(f"tiny preset, emotions, {samples} samples x 3 candidates, {torch.get_num_threads()} threads")
    print(f"{'run':14s} {'kept/s':>7s} {'candidates':>10s} " + " ".join(f"{s:>8s}" for s in STAGES)
          + "  verify share  (ms per kept image)")
    for name, extra in (("no verifier", {}), ("record", {"verify_mode": "record"}), ("gate", {"max_refills": 60})):
        out = work / name.replace(" ", "_")
        verify = () if not extra and name == "no verifier" else (f"emotion={classifier},anger=angry,"
                                                                 "surprise=surprised",)
        result = generate(GenerateConfig(recipe="emotions", out=out, num_samples=samples, model="tiny", quiet=True,
                                         verify=verify, **extra))
        t = result.timings
        engine = sum(t.get(s, 0) for s in STAGES)
        per = {s: 1000 * t.get(s, 0) / result.rows for s in STAGES}
        checked = result.quality["checked"] if result.quality else result.rows
        print(f"{name:14s} {result.rows / t['wall']:7.2f} {checked:10d} " + " ".join(f"{per[s]:8.1f}" for s in STAGES)
              + f"  {100 * t.get('verify', 0) / engine:10.2f}%")


def sizes(steps: int = 25, candidates: int = 3, repeats: int = 2) -> None:
    from diffusers import UNet2DConditionModel
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(num_labels=7)).eval()
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval()
    params = {"vit": sum(p.numel() for p in vit.parameters()) / 1e6, "unet": sum(p.numel() for p in unet.parameters()) / 1e6}
    with torch.inference_mode():
        x = torch.randn(candidates, 3, 224, 224)
        vit(pixel_values=x)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            vit(pixel_values=x)
        t_vit = (time.perf_counter() - start) / repeats  # one forward of a sample's candidates
        latents, text = torch.randn(2, 4, 64, 64), torch.randn(2, 77, 768)
        unet(latents, 500, encoder_hidden_states=text)
        start = time.perf_counter()
        for _ in range(repeats):
            unet(latents, 500, encoder_hidden_states=text)
        t_unet = (time.perf_counter() - start) / repeats  # one guided step of one candidate
    per_image_unet = t_unet * steps * candidates
    print(f"\nreal sizes, random weights, fp32 CPU, {torch.get_num_threads()} threads: ViT-B/16 "
          f"{params['vit']:.0f}M parameters, UNet {params['unet']:.0f}M")
    print(f"  verifier, {candidates} candidates at 224x224: {t_vit:.3f} s per kept image")
    print(f"  UNet, {steps} guided steps x {candidates} candidates (batch 2 at 64x64 latents): {per_image_unet:.1f} s "
          f"per kept image ({t_unet:.2f} s per step)")
    print(f"  verifier / UNet: {100 * t_vit / per_image_unet:.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--skip-sizes", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        end_to_end(Path(work), args.samples)
    if not args.skip_sizes:
        sizes()


if __name__ == "__main__":
    main()
