"""FLUX.1: a CLIP text encoder (pooled) and T5, a rectified-flow transformer over packed 2x2 latent patches.

FLUX.1 [schnell] is distilled to run without guidance (``--preset schnell``: 4 steps); FLUX.1 [dev] takes its
guidance as an embedding (``guidance_embeds``), not as a second, unconditional branch. So no family run has a
negative prompt to use, and a recipe that has one is refused rather than having it dropped silently, as are
weighted prompts, diffusion schedulers, and ``--cfg-until`` (there is no unconditional branch to stop).
Pruning works: x0 comes from the flow-matching velocity, and the pooled and guidance embeddings, which the
pipeline keeps out of the step callback's reach, are cut to the survivors on their way into the transformer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import PlanError
from .family import SizeRule
from .quiet import quiet
from .prompts import Conditioning, PromptEncoder
from .steps import cutting_inputs
from .sd3 import MAX_SEQUENCE_LENGTH, StableDiffusion3


class Flux(StableDiffusion3):
    name = "flux"
    pipeline = "Flux"
    label = "a FLUX.1"

    def encoder(self, pipe) -> PromptEncoder:
        def encode(prompt: str, negative: str) -> Conditioning:
            with quiet():  # CLIP stops at 77 tokens and says so for every prompt; T5 reads the rest
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
            if s.get("cfg_until") is not None:
                raise PlanError(f"cfg-until: not with {self.label} model: it runs no unconditional branch to stop")

    def call_inputs(self, conds: Sequence[Conditioning]) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": torch.cat([c.embeds for c in conds]),
                "pooled_prompt_embeds": torch.cat([c.pooled for c in conds])}

    def watching(self, pipe, hook):
        """The pipeline computes the pooled embeddings and the guidance embedding once, before its loop, and keeps
        them out of the step callback's reach: they are cut to the surviving candidates on the way in."""
        return cutting_inputs(pipe.transformer, hook, ("pooled_projections", "guidance"))

    def size_rule(self, pipe) -> SizeRule:
        vae = pipe.vae_scale_factor  # latents are packed in 2x2 patches; other sizes are resized with a warning
        return SizeRule(vae * 2, f"VAE {vae} x 2x2 packed latent patches")

    def unpack(self, pipe, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor) if latents.ndim == 3 else latents


FAMILY = Flux()
