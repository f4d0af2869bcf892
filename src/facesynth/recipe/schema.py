"""The recipe's schema: label axes (attributes) with their phrasings, the template, generation settings,
quotas, verifiers and adapters, as pydantic models that refuse what cannot work (unknown keys, NaN, booleans
for numbers, placeholders with format specs). :mod:`.loading` reads YAML into them.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import struct
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .identities import Identities

SPLITS = ("train", "validation", "test")
# Opt-in settings that change how many candidates finish, or the images themselves (see generation.steps).
SPEEDUPS = ("prune_at", "keep", "cfg_until")
DEFAULT_SETTINGS = {"steps": 25, "guidance": 7.5, "scheduler": "default", "width": 512, "height": 512,
                    **dict.fromkeys(SPEEDUPS)}
NAME_CHARS = set(string.ascii_lowercase + string.digits + "_")
SCHEDULER_NAMES = ("default", "ddim", "pndm", "euler", "euler_a", "dpm++_2m", "dpm++_2m_karras", "unipc", "lcm", "tcd",
                   "euler_trailing", "ddim_trailing")
# Few-step presets: the scheduler, steps and guidance each kind of model's card recommends (--preset; --scheduler,
# --steps and --guidance still override them). Guidance 0 or 1 runs no unconditional branch at all.
PRESETS = {
    "lcm": {"scheduler": "lcm", "steps": 4, "guidance": 1.0},  # LCM models and LCM-LoRA
    "tcd": {"scheduler": "tcd", "steps": 4, "guidance": 0.0},  # TCD-LoRA
    "lightning": {"scheduler": "euler_trailing", "steps": 4, "guidance": 0.0},  # SDXL-Lightning, 4-step
    "turbo": {"scheduler": "default", "steps": 1, "guidance": 0.0},  # SDXL-Turbo / SD-Turbo
    "hyper": {"scheduler": "ddim_trailing", "steps": 8, "guidance": 0.0},  # Hyper-SD, 8-step
    "schnell": {"scheduler": "default", "steps": 4, "guidance": 0.0},  # FLUX.1 [schnell]
}
# Presets made for one model family only (the others suit SD 1.x/2.x and SDXL checkpoints alike).
PRESET_FAMILIES = {"lightning": ("sdxl",), "schnell": ("flux",)}  # SDXL-Lightning, FLUX.1 [schnell]
# Column names every dataset has (schema.BUILTIN_COLUMNS keeps them in step): no attribute may take one.
RESERVED_ATTRIBUTES = frozenset((
    "sample_id", "image", "prompt", "negative_prompt", "caption", "seed", "clip_score", "candidate_scores",
    "candidate_index", "label_confidence", "attempt", "batch", "unet_calls", "clip_embedding", "face_box",
    "safety_score", "steps", "guidance", "scheduler", "width", "height", "prune_at", "keep", "cfg_until", "count",
    "split",
))
# Names the dataset card's configs use: no primary value may take one.
RESERVED_CONFIGS = frozenset(("default", "all"))
# Recipes hold only finite numbers: NaN or infinity is refused wherever a number is read.
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def _no_bool(value: Any) -> Any:
    """``true`` is not a number: YAML booleans are refused where a number is read (pydantic would take 1)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not a boolean ({str(value).lower()})")
    if isinstance(value, dict):
        for item in value.values():
            _no_bool(item)
    return value


class Settings(BaseModel):
    """Generation settings; any field left out inherits from the level above."""

    model_config = STRICT

    steps: int | None = Field(None, ge=1, le=1000)
    guidance: float | None = Field(None, ge=0, le=50)
    scheduler: str | None = None
    width: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    height: int | None = Field(None, ge=8, le=4096, multiple_of=8)
    # Opt-in speed-ups (see the README): prune to the best ``keep`` candidates after fraction ``prune_at`` of
    # the steps; run only the conditional branch after fraction ``cfg_until``.
    prune_at: float | None = Field(None, gt=0, lt=1)
    keep: int | None = Field(None, ge=1)
    cfg_until: float | None = Field(None, gt=0, lt=1)

    _numbers = field_validator("steps", "guidance", "width", "height", "prune_at", "keep", "cfg_until",
                               mode="before")(classmethod(lambda cls, v: _no_bool(v)))

    @model_validator(mode="after")
    def _prune_pair(self) -> "Settings":
        if (self.prune_at is None) != (self.keep is None):
            raise ValueError("prune_at and keep go together: give both or neither")
        return self

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, name: str | None) -> str | None:
        if name is not None and name not in SCHEDULER_NAMES:
            raise ValueError(f"unknown scheduler '{name}' (use {', '.join(SCHEDULER_NAMES)})")
        return name

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class Value(BaseModel):
    """One value of an attribute: its prompt phrasings, caption and settings."""

    model_config = STRICT

    phrases: list[str] = Field(min_length=1)
    caption: str | None = None
    generation: Settings = Settings()

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `happy: [smiling, joyful]`, `happy: smiling`, or `happy:` (the name is the phrase)
        if data is None:
            return {"phrases": []}
        if isinstance(data, str):
            return {"phrases": [data]}
        if isinstance(data, list):
            return {"phrases": data}
        return data

    @field_validator("phrases")
    @classmethod
    def _phrases(cls, phrases: list[str]) -> list[str]:
        for phrase in phrases:
            if not phrase.strip():
                raise ValueError("a phrase must not be blank")
        return phrases


class Attribute(BaseModel):
    """A label axis such as emotion or gender."""

    model_config = STRICT

    values: dict[str, Value]
    label_prompt: str = "a photo of {}"
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _default_phrases(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("values"), dict):
            values = {}
            for name, spec in data["values"].items():
                if spec is None or spec == [] or (isinstance(spec, dict) and not spec.get("phrases")):
                    spec = dict(spec or {}) if isinstance(spec, dict) else {}
                    spec["phrases"] = [str(name).replace("_", " ")]
                values[name] = spec
            data = {**data, "values": values}
        return data

    @field_validator("values")
    @classmethod
    def _values(cls, values: dict[str, Value]) -> dict[str, Value]:
        return _named_mapping(values)

    @field_validator("label_prompt")
    @classmethod
    def _label_prompt(cls, text: str) -> str:
        if placeholders(text) != [""]:
            raise ValueError("must contain '{}' exactly once, and no other placeholder")
        return text

    def caption(self, value: str) -> str:
        return self.values[value].caption or value.replace("_", " ")


class Balance(BaseModel):
    """Either a full cross product over named axes, or explicit strata with counts."""

    model_config = STRICT

    cross: list[str] | None = None
    strata: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "Balance":
        if (self.cross is None) == (self.strata is None):
            raise ValueError("give exactly one of 'cross' or 'strata'")
        if self.cross is not None and not self.cross:
            raise ValueError("cross: must not be empty")
        if self.strata is not None and not self.strata:
            raise ValueError("strata: must not be empty")
        return self


@dataclass(frozen=True)
class Stratum:
    """A label cell with an exact count."""

    labels: tuple[tuple[str, str], ...]
    count: int


class Verify(BaseModel):
    """An independent verifier of one attribute (see :mod:`facesynth.verifiers`): an image classifier
    (``model``, with ``labels`` mapping its class names to values) or a zero-shot CLIP (``zero_shot``)."""

    model_config = STRICT

    model: str | None = None
    zero_shot: str | None = None
    revision: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)  # class name -> value (or "other"); names that match map
    min_probability: float = Field(0.0, ge=0, le=1)  # with --verify-mode gate: the row's value needs at least this
    claimed_accuracy: str | None = None  # what the model's card claims, quoted in the dataset card

    _numbers = field_validator("min_probability", mode="before")(classmethod(lambda cls, v: _no_bool(v)))

    @model_validator(mode="after")
    def _one_of(self) -> "Verify":
        if (self.model is None) == (self.zero_shot is None):
            raise ValueError("give exactly one of 'model' (an image classifier) or 'zero_shot' (a CLIP model)")
        if self.zero_shot is not None and self.labels:
            raise ValueError("labels: a zero-shot verifier scores the attribute's own values; labels map the "
                             "classes of a classifier ('model')")
        return self


class Lora(BaseModel):
    """A LoRA adapter (see :mod:`facesynth.generation.adapters`): a Hub repo (``owner/name``, or
    ``owner/name/path/in/repo.safetensors``) or a local ``.safetensors`` file or folder, at ``weight``."""

    model_config = STRICT

    source: str = Field(min_length=1)
    weight: float = Field(1.0, ge=-8, le=8)
    revision: str | None = None

    _numbers = field_validator("weight", mode="before")(classmethod(lambda cls, v: _no_bool(v)))

    @model_validator(mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        """``SOURCE[@WEIGHT]`` as a plain string, as ``--lora`` takes it."""
        if isinstance(value, str):
            source, at, weight = value.rpartition("@")
            try:
                number = float(weight) if at and source else None
            except ValueError:  # an '@' inside the name (`my@lora.safetensors`): no weight was given
                number = None
            return {"source": value} if number is None else {"source": source, "weight": number}
        return value


class Recipe(BaseModel):
    """A validated recipe."""

    model_config = STRICT

    name: str
    description: str = ""
    license: str | None = None
    model: str | None = None
    seed: int = Field(0, ge=0, lt=2**63)
    primary: str
    attributes: dict[str, Attribute]
    template: str
    negative_prompt: str = ""
    caption: str | None = None
    generation: Settings = Settings()
    balance: Balance
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1})
    verify: dict[str, Verify] = Field(default_factory=dict)  # attribute -> its independent verifier
    loras: list[Lora] = Field(default_factory=list)  # LoRA adapters fused into the model, in this order
    identities: Identities | None = None  # rows as identity sets (see .identities)

    _numbers = field_validator("seed", "splits", mode="before")(classmethod(lambda cls, v: _no_bool(v)))

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        _check_name(name)
        return name

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, attributes: dict[str, Attribute]) -> dict[str, Attribute]:
        for name in attributes:
            if name in RESERVED_ATTRIBUTES:
                raise ValueError(f"'{name}' is a column every dataset has; name the attribute otherwise")
            if name.startswith("verified_"):
                raise ValueError(f"'{name}': names starting with 'verified_' are the verifiers' columns; "
                                 "name the attribute otherwise")
        return _named_mapping(attributes)

    @field_validator("template")
    @classmethod
    def _template(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("must not be empty")
        return text

    @field_validator("splits")
    @classmethod
    def _splits(cls, splits: dict[str, float]) -> dict[str, float]:
        for name, ratio in splits.items():
            if name not in SPLITS:
                raise ValueError(f"unknown split '{name}' (use {', '.join(SPLITS)})")
            if ratio < 0:
                raise ValueError(f"ratio for '{name}' must be >= 0")
        if abs(sum(splits.values()) - 1.0) > 1e-6:
            raise ValueError(f"ratios must sum to 1 (they sum to {sum(splits.values()):g})")
        if splits.get("train", 0) <= 0:
            raise ValueError("'train' must have a ratio above 0")
        return {name: splits[name] for name in SPLITS if splits.get(name, 0) > 0}

    # Resolved views -----------------------------------------------------------------
    @property
    def settings(self) -> dict[str, Any]:
        """Recipe-wide generation settings with defaults filled in."""
        return {**DEFAULT_SETTINGS, **self.generation.overrides()}

    @property
    def caption_template(self) -> str:
        """Template of the attribute caption used for CLIP reranking."""
        if self.caption:
            return self.caption
        return "a photo of a person, " + ", ".join("{" + a + "}" for a in self.attributes)

    @property
    def strata(self) -> list[Stratum]:
        """Expanded strata (empty for cross-product recipes)."""
        return _expand_strata(self.balance.strata or [])

    def fingerprint(self) -> str:
        """A sha256 of the recipe's canonical JSON form."""
        # a recipe without verifiers, adapters or identity sets keeps the fingerprint it had before they existed
        unset = {key for key in ("verify", "loras", "identities") if not getattr(self, key)}
        blob = json.dumps(self.model_dump(mode="json", exclude=unset or None), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def switch_step(fraction: float | None, steps: int) -> int | None:
    """How many steps run before a switch at ``fraction``; None when it would change nothing."""
    if fraction is None:
        return None
    # the fraction as the ``prune_at``/``cfg_until`` columns store it (float32), so the engine, validate and the
    # card, reading the command line, a recipe or a row, all get the same step
    done = max(1, round(float(struct.unpack("f", struct.pack("f", fraction))[0]) * steps))
    return done if done < steps else None


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or not set(name) <= NAME_CHARS or name[0] == "_":
        shown = f"'{name}'" if str(name).isprintable() else repr(name)  # one line, whatever the name holds
        raise ValueError(f"name {shown} must use lowercase letters, digits and '_' only")


def _named_mapping(mapping: dict) -> dict:
    """A mapping must have entries, each with a plain lowercase name."""
    if not mapping:
        raise ValueError("must not be empty")
    for name in mapping:
        _check_name(name)
    return mapping


def _expand_strata(rows: list[dict[str, Any]]) -> list[Stratum]:
    out = []
    for row in rows:
        row = dict(row)
        count = row.pop("count", None)
        split_keys = [k for k, v in row.items() if isinstance(v, dict)]
        if count is not None:
            out.append(Stratum(tuple(row.items()), count))
        else:
            key = split_keys[0]
            for value, n in row[key].items():
                labels = {**row, key: value}
                out.append(Stratum(tuple(labels.items()), n))
    return out


def placeholders(template: str) -> list[str]:
    """The names of a template's placeholders; each must be bare: ``{name}`` (or ``{}``), no format spec.

    ``{gender:d}``, ``{gender!r}`` or ``{gender:>99999}`` would fail or run away at format time,
    so they are refused here, when the recipe is read.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad placeholder syntax ({exc}); write a literal brace as '{{{{' or '}}}}'") from None
    fields = []
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if spec or conversion or not (field == "" or set(field) <= NAME_CHARS):
            whole = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            name = re.match(r"[a-z0-9_]*", field).group() or "name"
            raise ValueError(f"placeholder '{whole}' must be a bare attribute name such as '{{{name}}}'")
        fields.append(field)
    return fields
