"""Stable Diffusion 3.x: two CLIP text encoders and T5 (prompts beyond CLIP's 77 tokens reach T5), an MMDiT
transformer, flow matching, and a VAE whose latents are scaled and shifted.

What this family cannot do is refused in one line before any image is made, never dropped silently:
A1111/compel weights (the pipeline encodes plain text, and T5 has no weights), and the diffusion schedulers
(SD 3 runs with its own flow-matching scheduler, ``default``). Pruning takes its x0 from the flow-matching
velocity (``x0 = x_t - sigma * v``, see :func:`.steps.clean_prediction`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import PlanError
from .family import SizeRule
from .quiet import quiet
from .prompts import Conditioning, PromptEncoder, has_weights
from .sd import decode_latents
from .sdxl import StableDiffusionXL

MAX_SEQUENCE_LENGTH = 256  # T5 tokens, as the SD 3.x pipelines default to


class StableDiffusion3(StableDiffusionXL):
    name = "sd3"
    pipeline = "StableDiffusion3"
    label = "an SD 3.x"

    def encoder(self, pipe) -> PromptEncoder:
        def encode(prompt: str, negative: str) -> Conditioning:
            with quiet():  # CLIP stops at 77 tokens and says so for every prompt; T5 reads the rest
                embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
                    prompt, None, None, device=pipe.device, num_images_per_prompt=1,
                    do_classifier_free_guidance=True, negative_prompt=negative,
                    max_sequence_length=MAX_SEQUENCE_LENGTH)
            return Conditioning(embeds, negative_embeds, pooled, negative_pooled)

        return PromptEncoder(encode)

    def check(self, samples: Sequence[Any], settings: Sequence[dict[str, Any]]) -> None:
        for sample, s in zip(samples, settings):
            for what, text in (("prompt", sample.prompt), ("negative prompt", sample.negative_prompt)):
                if has_weights(text):
                    raise PlanError(f"{sample.sample_id}: its {what} has weights ('{text[:60]}'), which {self.label} "
                                    "model cannot apply (its pipeline encodes plain text, T5 has no weights); write "
                                    "the recipe's prompts without them")
            if s["scheduler"] != "default":
                raise PlanError(f"scheduler: '{s['scheduler']}' is a diffusion scheduler; {self.label} model runs "
                                "with its own flow-matching scheduler (--scheduler default)")

    def size_rule(self, pipe) -> SizeRule:
        vae, config = pipe.vae_scale_factor, pipe.transformer.config
        patch, most = config.patch_size, config.pos_embed_max_size
        why = f"VAE {vae} x patch {patch}"
        if most is None:
            return SizeRule(vae * patch, why)
        return SizeRule(vae * patch, why, most * patch * vae,
                        f"its positional embeddings cover {most} patches a side: {most} x {why}")

    def decode(self, vae, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(vae, latents, shift=getattr(vae.config, "shift_factor", None) or 0.0)


FAMILY = StableDiffusion3()
