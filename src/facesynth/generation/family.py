"""The pipeline families the engine runs, each in its own module behind one small interface.

The engine talks to a family only through :class:`Family`: it encodes each sample's prompts alone (so a
sample's pixels never depend on its batch), hands one call's embeddings to the diffusers pipeline, which
denoises with facesynth's step hook (``callback_on_step_end``, see :mod:`.steps`), and decodes latents to
images. Adding a family is a module with those things and a line in :func:`.families._families`; the
engine, the runner and the shards stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ContextManager, Protocol

import numpy as np
import torch

from ..errors import PlanError
from .prompts import Conditioning, PromptEncoder


@dataclass(frozen=True)
class SizeRule:
    """The image sizes a loaded pipeline takes: every side a multiple of ``multiple`` (``why``), and at most
    ``largest`` pixels (``why_largest``; None: no limit)."""

    multiple: int
    why: str
    largest: int | None = None
    why_largest: str = ""


class Family(Protocol):
    name: str  # what ``manifest.model.architecture`` records
    pipeline: str  # the diffusers pipeline class name this family runs (a prefix: ``StableDiffusionXL``)
    label: str  # for messages: "an SDXL"

    def encoder(self, pipe) -> PromptEncoder:
        """Encodes one sample's prompt and negative prompt at a time."""

    def check(self, samples: Sequence[Any], settings: Sequence[dict[str, Any]]) -> None:
        """Refuse, in one line, what this family cannot do with these samples (at these settings)."""

    def size_rule(self, pipe) -> SizeRule:
        """The widths and heights this loaded pipeline takes as they are (diffusers would refuse, or resize, others)."""

    def call_inputs(self, conds: Sequence[Conditioning]) -> dict[str, torch.Tensor]:
        """One pipeline call's embedding arguments, for these samples' conditionings in order."""

    def watching(self, pipe, hook) -> ContextManager[None]:
        """Held around one pipeline call with its step hook (:class:`.steps.StepHook`), for what the hook cannot
        reach through the callback."""

    def unpack(self, pipe, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """The pipeline's latents (or a step's x0) as an image-shaped ``(N, C, H, W)`` tensor."""

    def decode(self, vae, latents: torch.Tensor) -> torch.Tensor:
        """Image-shaped latents to float images in [0, 1]."""


def check_size(family: Family, pipe, settings: Sequence[dict[str, Any]]) -> None:
    """Refuse, in one line, a width or height the pipeline would refuse mid-run or silently change."""
    rule = family.size_rule(pipe)
    for key in ("width", "height"):
        for value in sorted({s[key] for s in settings}):
            if value % rule.multiple:
                raise PlanError(f"{key}: {value} is not a multiple of {rule.multiple}, which {family.label} model needs "
                                f"({rule.why}); set --{key} or the recipe's {key}")
            if rule.largest is not None and value > rule.largest:
                raise PlanError(f"{key}: {value} is more than the {rule.largest} px {family.label} model takes "
                                f"({rule.why_largest}); set --{key} or the recipe's {key}")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] as (B, H, W, 3) uint8 on the CPU."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
