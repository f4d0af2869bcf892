"""What a LoRA adapter costs per denoising step: none, PEFT layers (unfused), and fused as facesynth runs it.

    python benchmarks/bench_adapters.py [--repeats 3] [--rank 16]

An SD 1.5-sized ``UNet2DConditionModel`` with random weights (64x64 latents, 768-d text, a batch of 2 as
classifier-free guidance runs it) and a random rank-``--rank`` LoRA on every attention projection, made with
PEFT; all three timed in one process, alternating, so compare the ratios. Fused, the adapter's layers are
gone, so its step should cost what a step without it costs.
"""

from __future__ import annotations

import argparse
import time

import torch


def unet_with(rank: int, fuse: bool | None):
    """The UNet alone (None), with an unfused LoRA (False) or with it fused into the weights (True)."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval()
    if fuse is not None:
        torch.manual_seed(1)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        if fuse:
            unet.fuse_lora()
            unet.unload_lora()
    return unet


def step_seconds(unet, repeats: int) -> float:
    latents, text = torch.randn(2, 4, 64, 64), torch.randn(2, 77, 768)
    with torch.no_grad():
        unet(latents, 500, text)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            unet(latents, 500, text)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    runs = {"no adapter": None, "LoRA, unfused (PEFT layers)": False, "LoRA, fused": True}
    unets = {name: unet_with(args.rank, fuse) for name, fuse in runs.items()}
    times = {name: [] for name in runs}
    for _ in range(2):  # alternate, so a noisy neighbour slows every run alike
        for name, unet in unets.items():
            times[name].append(step_seconds(unet, args.repeats))
    base = min(times["no adapter"])
    print(f"{'run':30s} {'s/step':>8s} {'vs none':>8s}")
    for name in runs:
        best = min(times[name])
        print(f"{name:30s} {best:8.3f} {best / base:8.2f}")


if __name__ == "__main__":
    main()
