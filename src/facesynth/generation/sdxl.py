"""SDXL: two CLIP text encoders (the second's pooled output too), compel for weighted prompts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .prompts import Conditioning, PromptEncoder, compel_encoder
from .sd import StableDiffusion


class StableDiffusionXL(StableDiffusion):
    name = "sdxl"
    pipeline = "StableDiffusionXL"
    label = "an SDXL"

    def encoder(self, pipe) -> PromptEncoder:
        from compel import CompelForSDXL

        return compel_encoder(CompelForSDXL(pipe))

    def call_inputs(self, conds: Sequence[Conditioning]) -> dict[str, torch.Tensor]:
        return {**super().call_inputs(conds),
                "pooled_prompt_embeds": torch.cat([c.pooled for c in conds]),
                "negative_pooled_prompt_embeds": torch.cat([c.negative_pooled for c in conds])}


FAMILY = StableDiffusionXL()
