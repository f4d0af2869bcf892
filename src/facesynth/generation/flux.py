"""FLUX.1: a CLIP text encoder (pooled) and T5, a rectified-flow transformer over packed 2x2 latent patches.

FLUX.1 [schnell] is distilled to run without guidance (``--preset schnell``: 4 steps); FLUX.1 [dev] takes its
guidance as an embedding (``guidance_embeds``), not as a second, unconditional branch. So no family run has a
negative prompt to use, and a recipe that has one is refused rather than having it dropped silently, as are
weighted prompts, diffusion schedulers, and the speed-ups that need what this pipeline does not give a step
callback: ``--cfg-until`` (there is no unconditional branch to stop) and ``--prune-at`` (the pipeline keeps its
pooled text embeddings out of the callback's reach, so they cannot be cut to the surviving candidates).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import PlanError
from .prompts import Conditioning, PromptEncoder
from .sd import decode_latents
from .sd3 import MAX_SEQUENCE_LENGTH, StableDiffusion3


class Flux(StableDiffusion3):
    name = "flux"
    pipeline = "Flux"
    label = "a FLUX.1"

    def encoder(self, pipe) -> PromptEncoder:
        def encode(prompt: str, negative: str) -> Conditioning:
            embeds, pooled, _ = pipe.encode_prompt(prompt, None, device=pipe.device, num_images_per_prompt=1,
                                                   max_sequence_length=MAX_SEQUENCE_LENGTH)
            return Conditioning(embeds, embeds, pooled, pooled)  # no negative: the call never reads it

        return PromptEncoder(encode)

    def check(self, samples: Sequence[Any], settings: Sequence[dict[str, Any]]) -> None:
        super().check(samples, settings)
        for sample, s in zip(samples, settings):
            if sample.negative_prompt:
                raise PlanError(f"{sample.sample_id}: has a negative prompt, which {self.label} model never uses "
                                "(no unconditional branch runs); write the recipe without negative_prompt")
            for key, what in (("prune_at", "its pipeline keeps the pooled text embeddings out of a step callback's "
                                           "reach, so candidates cannot be cut mid-call"),
                              ("cfg_until", "it runs no unconditional branch to stop")):
                if s.get(key) is not None:
                    raise PlanError(f"{key.replace('_', '-')}: not with {self.label} model: {what}")

    def call_inputs(self, conds: Sequence[Conditioning]) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": torch.cat([c.embeds for c in conds]),
                "pooled_prompt_embeds": torch.cat([c.pooled for c in conds])}

    def unpack(self, pipe, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor) if latents.ndim == 3 else latents

    def decode(self, vae, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(vae, latents, shift=getattr(vae.config, "shift_factor", None) or 0.0)


FAMILY = Flux()
