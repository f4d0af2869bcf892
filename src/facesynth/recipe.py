"""Recipe schema and validation.

A recipe is a YAML file that declares label axes (attributes), their prompt
phrasings, the prompt template, the negative prompt, generation settings and
how many samples of each label cell to make. Every problem is reported as one
line naming the file, the key path and what is wrong, for example
``recipes/x.yaml: attributes.emotion.values: must not be empty``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import string
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RecipeError

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
        # a recipe without verifiers or adapters keeps the fingerprint it had before they existed
        unset = {key for key in ("verify", "loras") if not getattr(self, key)}
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


# Loading ----------------------------------------------------------------------------
MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_DEPTH = 64  # nesting levels a recipe may use (it needs five or six)
MAX_ALIASES = 256  # *alias references a recipe may use (each can stand for a whole subtree)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys instead of keeping the last, and keys that are not text;
    merge keys (``<<: *base``) merge, and a key written out beats a merged one, as YAML says."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                if isinstance(key, (list, dict, set)):
                    raise RecipeError(f"line {line}: a {type(key).__name__} is used as a key; keys are text")
                shown = str(key).lower() if isinstance(key, bool) else repr(key)
                raise RecipeError(f"line {line}: the key {shown:.60} is a {type(key).__name__}, not text; write it "
                                  "in quotes")
            if key in seen:
                raise RecipeError(f"line {line}: duplicate key '{key}'")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_shape(text: str) -> None:
    """Nesting and aliases within bounds, found by the scanner alone (it does not recurse), so a structure nested
    thousands deep or a "billion laughs" of aliases is one line naming where, not a crash."""
    depth, aliases = 0, 0
    opens = (yaml.BlockSequenceStartToken, yaml.BlockMappingStartToken, yaml.FlowSequenceStartToken,
             yaml.FlowMappingStartToken)
    closes = (yaml.BlockEndToken, yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, opens):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeError(f"line {token.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep; a "
                                  "recipe needs a few")
        elif isinstance(token, closes):
            depth -= 1
        elif isinstance(token, yaml.AliasToken):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise RecipeError(f"line {token.start_mark.line + 1}: more than {MAX_ALIASES} aliases (*name); "
                                  "write the values out")


def shipped_recipes() -> list[str]:
    """Names of the recipes that ship with facesynth."""
    folder = resources.files("facesynth") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve(name_or_path: str | Path) -> tuple[str, str]:
    """Return (source label, YAML text) for a shipped recipe name or a file path."""
    path = Path(name_or_path)
    if path.is_file():
        try:
            return str(path), path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{path}: cannot read: {exc}") from exc
    name = str(name_or_path)
    if name in shipped_recipes():
        text = (resources.files("facesynth") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8")
        return f"recipes/{name}.yaml", text
    raise RecipeError(f"{name}: no such recipe file, and not a shipped recipe ({', '.join(shipped_recipes())})")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load and validate a recipe by shipped name or by path."""
    source, text = resolve(name_or_path)
    return parse_recipe(text, source)


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Parse YAML text into a validated Recipe; errors name ``source``."""
    try:
        _check_shape(text)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if problem.startswith("could not determine a constructor for the tag"):
            tag = problem.rsplit(" ", 1)[-1].strip("'").replace("tag:yaml.org,2002:", "!!")
            problem = f"the tag {tag} is not plain YAML; a recipe holds text, numbers, lists and mappings only"
        elif problem == "but found another document":
            problem = "a second YAML document ('---'); a recipe is one document"
        raise RecipeError(f"{source}: YAML syntax error: {where}{problem}") from None
    except RecursionError:  # a recursive alias that something below walks without end
        raise RecipeError(f"{source}: an alias refers to a mapping that holds it (a loop); write the values "
                          "out") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: the recipe must be a YAML mapping of keys to values")
    data = {k: v for k, v in data.items() if not k.startswith("x-")}  # x-...: a place for anchors (&base)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{source}: {_first_error(exc)}") from None
    except RecursionError:
        raise RecipeError(f"{source}: an alias refers to a mapping that holds it (a loop); write the values "
                          "out") from None
    problem = _cross_check(recipe)
    if problem:
        raise RecipeError(f"{source}: {problem}")
    return recipe


def _first_error(exc: ValidationError) -> str:
    """The most telling problem: an unknown key before the missing key it was probably meant to be."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(str(p) if str(p).isprintable() else repr(p) for p in err["loc"])  # a key may hold a newline
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if err["type"] == "extra_forbidden":
        missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == err["loc"][:-1]]
        known = difflib.get_close_matches(str(err["loc"][-1]), missing, n=1)
        msg = f"unknown key (did you mean '{known[0]}'?)" if known else "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "finite_number":
        msg = "must be a finite number (not NaN or infinity)"
    return f"{loc}: {msg}" if loc else msg


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


def _cross_check(recipe: Recipe) -> str | None:
    """Checks that span several keys; returns the first problem or None."""
    attrs = recipe.attributes
    if recipe.primary not in attrs:
        return f"primary: '{recipe.primary}' is not an attribute ({', '.join(attrs)})"
    for key in ("template", "caption"):
        text = getattr(recipe, key)
        if text is None:
            continue
        try:
            fields = placeholders(text)
        except ValueError as exc:
            return f"{key}: {exc}"
        for field in fields:
            if field not in attrs:
                return f"{key}: placeholder '{{{field}}}' names no attribute"
    primary_values = attrs[recipe.primary].values
    for value in primary_values:
        if value in RESERVED_CONFIGS:
            return (f"attributes.{recipe.primary}.values: '{value}' is reserved for the dataset's "
                    "all-rows config; name the value otherwise")
    for attr in recipe.verify:
        if attr not in attrs:
            return f"verify.{attr}: not an attribute ({', '.join(attrs)})"
        if "other" in attrs[attr].values:
            return (f"verify.{attr}: a verifier says 'other' for what is none of the values, so no value may be "
                    "named 'other'; name it otherwise")
    if recipe.balance.cross is not None:
        seen = set()
        for i, axis in enumerate(recipe.balance.cross):
            if axis not in attrs:
                return f"balance.cross.{i}: '{axis}' is not an attribute"
            if axis in seen:
                return f"balance.cross.{i}: '{axis}' is listed twice"
            seen.add(axis)
        return None
    return _check_strata(recipe)


def _check_strata(recipe: Recipe) -> str | None:
    attrs = recipe.attributes
    cells = set()
    for i, row in enumerate(recipe.balance.strata or []):
        where = f"balance.strata.{i}"
        if not isinstance(row, dict) or not row:
            return f"{where}: must be a mapping of attribute values and a count"
        keyed = [k for k, v in row.items() if isinstance(v, dict)]
        if "count" in row and keyed:
            return f"{where}: give either 'count' or one attribute with per-value counts, not both"
        if "count" not in row and len(keyed) != 1:
            return f"{where}: needs 'count', or exactly one attribute with per-value counts"
        for key, value in row.items():
            if key == "count":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    return f"{where}.count: must be a whole number >= 0"
                continue
            if key not in attrs:
                return f"{where}.{key}: not an attribute"
            if not isinstance(value, (str, dict)):
                return (f"{where}.{key}: must be one value name, or a mapping of value names to counts "
                        f"(got {type(value).__name__} {value!r})")
            choices = value if isinstance(value, dict) else {value: 1}
            for name, n in choices.items():
                if name not in attrs[key].values:
                    return f"{where}.{key}: unknown value '{name}'"
                if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                    return f"{where}.{key}.{name}: count must be a whole number >= 0"
    for stratum in _expand_strata(recipe.balance.strata or []):
        key = tuple(sorted(stratum.labels))
        if key in cells:
            return f"balance.strata: the cell {dict(key)} is listed twice"
        cells.add(key)
    if sum(s.count for s in _expand_strata(recipe.balance.strata or [])) == 0:
        return "balance.strata: counts add up to 0"
    return None
