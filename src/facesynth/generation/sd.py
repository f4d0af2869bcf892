"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, compel for weighted prompts, a 4-channel VAE."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from .family import SizeRule
from .prompts import Conditioning, PromptEncoder, compel_encoder

VAE_CHUNK = 8  # latents decoded at a time: memory stays flat for any batch


def decode_latents(vae, latents: torch.Tensor, mean=None, std=None, shift: float = 0.0) -> torch.Tensor:
    """VAE decode in chunks to float images in [0, 1], upcasting where the VAE asks for it; ``mean`` and ``std``
    undo a VAE's latent normalisation where its config has one, ``shift`` an SD 3-style latent shift."""
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    dtype = torch.float32 if upcast else vae.dtype
    if upcast:
        vae.to(torch.float32)
    try:
        parts = []
        for chunk in latents.split(VAE_CHUNK):
            chunk = chunk.to(dtype)
            if mean is not None and std is not None:
                shape = (1, chunk.shape[1], 1, 1)
                chunk = (chunk * torch.tensor(std).view(shape).to(chunk) / vae.config.scaling_factor
                         + torch.tensor(mean).view(shape).to(chunk))
            else:
                chunk = chunk / vae.config.scaling_factor + shift
            parts.append(vae.decode(chunk, return_dict=False)[0])
    finally:
        if upcast:
            vae.to(torch.float16)
    return (torch.cat(parts).float() / 2 + 0.5).clamp(0, 1)


class StableDiffusion:
    name = "sd"
    pipeline = "StableDiffusion"
    label = "an SD 1.x/2.x"

    def encoder(self, pipe) -> PromptEncoder:
        from compel import CompelForSD

        return compel_encoder(CompelForSD(pipe))

    def check(self, samples: Sequence[Any], settings: Sequence[dict[str, Any]]) -> None:
        """Nothing this family refuses: weighted prompts and every scheduler run."""

    def size_rule(self, pipe) -> SizeRule:
        return SizeRule(pipe.vae_scale_factor, f"its VAE downsamples by {pipe.vae_scale_factor}")

    def call_inputs(self, conds: Sequence[Conditioning]) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": torch.cat([c.embeds for c in conds]),
                "negative_prompt_embeds": torch.cat([c.negative for c in conds])}

    def unpack(self, pipe, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return latents

    def watching(self, pipe, hook):
        """Nothing to add to a call: the step callback reaches every tensor with a row per image."""
        return nullcontext()

    def decode(self, vae, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(vae, latents, getattr(vae.config, "latents_mean", None),
                              getattr(vae.config, "latents_std", None))


FAMILY = StableDiffusion()
