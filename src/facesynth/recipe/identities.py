"""Identity sets in a recipe: ``identities: {vary: [emotion]}`` makes every identity (one synthetic person) a set
of rows, one per combination of the varied attributes' values, with every other attribute fixed for the
identity. How the members are kept the same person (``mechanism``), how it is checked (``embedder``,
``min_similarity``) and the cross-key checks live here; the plan (:mod:`facesynth.plan.samples`) expands
identities into rows."""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MECHANISMS = ("shared-attention", "reference", "edit")
BUILT = ("shared-attention", "reference")  # edit: an instruction-editing pipeline, not built yet
CLIP_EMBEDDER = "clip"  # the reranking CLIP's image tower


class Identities(BaseModel):
    """How a recipe's rows form identity sets."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    vary: list[str] = Field(min_length=1)  # the attributes that change within a set
    mechanism: Literal["shared-attention", "reference", "edit"] = "shared-attention"
    strength: float = Field(1.0, ge=0, le=4)  # shared attention: weight of the reference's keys (0: off)
    steps: tuple[float, float] = (0.0, 1.0)  # shared attention: the fraction of the steps it runs in, [start, end)
    adapter: str | None = None  # reference: an IP-Adapter (folder or Hub repo, safetensors), pinned like adapters
    adapter_file: str | None = None  # its weights file, where the folder or repo holds several
    adapter_scale: float = Field(0.6, ge=0, le=2)  # reference: the IP-Adapter's scale
    embedder: str = CLIP_EMBEDDER  # clip, a transformers image model (folder or Hub id), or an .onnx file
    embedder_revision: str | None = None
    min_similarity: float | None = Field(None, ge=-1, le=1)  # a gate: each member's cosine to its reference

    @field_validator("vary")
    @classmethod
    def _distinct(cls, vary: list[str]) -> list[str]:
        if len(set(vary)) != len(vary):
            raise ValueError("an attribute is listed twice")
        return vary

    @model_validator(mode="after")
    def _steps(self) -> "Identities":
        start, end = self.steps
        if not 0 <= start < end <= 1:
            raise ValueError(f"steps: [{start:g}, {end:g}] must be fractions of the steps with 0 <= start < end <= 1")
        if self.mechanism not in BUILT:
            raise ValueError(f"mechanism: '{self.mechanism}' is not built yet; use {' or '.join(BUILT)}")
        if self.mechanism == "reference" and not self.adapter:
            raise ValueError("mechanism reference: needs adapter (an IP-Adapter folder or Hub repo)")
        return self

    def content(self) -> dict[str, Any]:
        """What decides the rows (the run's parameters)."""
        return self.model_dump(mode="json")


def parse_option(text: str) -> list[str]:
    """``--identities emotion,gender`` as the varied attributes."""
    names = [n.strip() for n in str(text).split(",")]
    if not all(names):
        raise ValueError(f"'{text}' is not ATTRIBUTE[,ATTRIBUTE...]")
    return names


def set_size(recipe, spec: Identities) -> int:
    """Rows per identity: the product of the varied attributes' value counts."""
    return math.prod(len(recipe.attributes[a].values) for a in spec.vary)


def combinations(recipe, spec: Identities) -> list[dict[str, str]]:
    """The varied values of each member of a set, in member order (the first is the reference)."""
    values = [list(recipe.attributes[a].values) for a in spec.vary]
    return [dict(zip(spec.vary, combo)) for combo in itertools.product(*values)]


def check(recipe, spec: Identities, where: str = "identities") -> str | None:
    """The first problem with ``spec`` for this recipe, or None: varied attributes exist, no stratum fixes one,
    every stratum holds whole sets, and a varied attribute's values share their generation settings (a set is
    denoised in one call)."""
    attrs = recipe.attributes
    key = where if where.startswith("--") else f"{where}.vary"
    for name in spec.vary:
        if name not in attrs:
            return f"{key}: '{name}' is not an attribute ({', '.join(attrs)})"
    if recipe.balance.strata is not None:
        size = set_size(recipe, spec)
        for i, stratum in enumerate(recipe.strata):
            fixed = [a for a, _ in stratum.labels if a in spec.vary]
            if fixed:
                return (f"{key}: '{fixed[0]}' is fixed by balance.strata.{i}; a varied attribute takes every "
                        "value in each set, so it cannot be a stratum's")
            if stratum.count % size:
                return (f"balance.strata.{i}: {stratum.count} rows is not a whole number of identity sets of {size} "
                        "rows")
    for name in spec.vary:
        settings = {v: value.generation.overrides() for v, value in attrs[name].values.items()}
        if len({tuple(sorted(s.items())) for s in settings.values()}) > 1:
            odd = next(v for v, s in settings.items() if s)
            return (f"{key}: the values of '{name}' set their own generation settings ({odd}: {settings[odd]}); "
                    "a set is denoised in one call, so its members share their settings")
    return None
