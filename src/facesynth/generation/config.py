"""What a ``generate`` run is given and what decides its content: the config, the settings it overrides, the
parameters (and their fingerprint) a resume must match, and the models and gates it uses."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import PlanError
from ..folder.state import Worker
from ..plan import Plan
from ..checks.quality import QualityOptions, require_cv2
from ..recipe import Recipe
from ..folder.schema import SETTING_COLUMNS
from ..tiny import is_tiny
from .adapters import Adapter

logger = logging.getLogger(__name__)

DEFAULT_DEDUPE = 0.95


@dataclass
class GenerateConfig:
    """Everything ``facesynth generate`` takes."""

    recipe: str
    out: Path
    num_samples: int | None = None
    seed: int | None = None
    model: str | None = None
    model_config: str | None = None
    revision: str | None = None
    clip_model: str | None = None
    candidates: int = 3
    batch_size: int = 12
    device: str = "auto"
    dtype: str | None = None
    scheduler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    prune_at: float | None = None
    keep: int | None = None
    cfg_until: float | None = None
    rerank: str = "caption"
    min_label_confidence: float | None = None
    max_attempts: int = 3
    rows_per_shard: int | None = None
    overwrite: bool = False
    repair: bool = False
    dataset_version: str | None = None
    worker_index: int | None = None
    num_workers: int | None = None
    compile: bool = False
    channels_last: bool = False
    faces: bool = False
    min_face_size: float = 0.2
    dedupe_threshold: float | None = None  # None: 0.95, or off for the tiny preset
    no_dedupe: bool = False
    safety: bool = False
    safety_threshold: float = 0.5
    max_refills: int = 8
    preset: str | None = None  # a few-step preset (recipe.PRESETS): scheduler, steps and guidance
    verify: tuple[str, ...] = ()  # ATTR=MODEL or ATTR=zero-shot:MODEL, replacing the recipe's verifier
    verify_mode: str = "gate"
    lora: tuple[str, ...] = ()  # SOURCE[@WEIGHT] adapters, replacing the recipe's loras
    identities: str | None = None  # ATTR[,ATTR]: identity sets varying these (replacing the recipe's vary)
    crop_margin: float = 0.25
    quiet: bool = False
    write_card: bool = True
    storage_options: dict[str, Any] | None = None  # for an fsspec --out (credentials, endpoint): never written
    stage: str | None = None  # the staging folder of an fsspec --out (default: facesynth's cache)


@dataclass
class GenerateResult:
    out: Path
    rows: int
    shards_written: int
    shards_skipped: int
    timings: dict[str, float]
    worker: Worker = field(default_factory=Worker)
    merged: bool = True
    quality: dict[str, Any] | None = None  # totals of this worker's shards (see quality.quality_report)
    replaced: int = 0  # rows rejected in review and made again by this run
    version: str | None = None


def settings_overrides(cfg: GenerateConfig, model: str) -> dict[str, Any]:
    """Preset settings (the tiny model's size and steps), then the command line's, checked like a recipe's."""
    from pydantic import ValidationError

    from ..recipe import Settings

    out: dict[str, Any] = {}
    if is_tiny(model):
        from ..tiny import TINY_SETTINGS

        out.update(TINY_SETTINGS)
    if cfg.preset is not None:
        from ..recipe import PRESETS

        if cfg.preset not in PRESETS:
            raise PlanError(f"--preset: '{cfg.preset}' is not one of {', '.join(PRESETS)}")
        out.update(PRESETS[cfg.preset])
    partner = {"prune_at": {"keep": 1}, "keep": {"prune_at": 0.5}}  # checked alone, then as a pair below
    for key in SETTING_COLUMNS:
        value = getattr(cfg, key)
        if value is not None:
            try:
                Settings.model_validate({key: value, **partner.get(key, {})})
            except ValidationError as exc:
                err = exc.errors()[0]
                why = "must be a finite number" if err["type"] == "finite_number" else err["msg"].removeprefix(
                    "Value error, ")
                raise PlanError(f"--{key.replace('_', '-')}: {why} (got {value})") from None
            out[key] = value
    if (cfg.prune_at is None) != (cfg.keep is None):
        raise PlanError("--prune-at and --keep go together: give both or neither")
    _check_preset_family(cfg.preset, model, cfg.revision)
    if cfg.keep is not None and cfg.keep >= cfg.candidates:
        raise PlanError(f"--keep: must be below --candidates ({cfg.candidates}) to prune anything (got {cfg.keep})")
    return out


def check_speedups(cfg: GenerateConfig, sizes: list[dict[str, Any]]) -> None:
    """A speed-up that would never take effect is refused, not recorded: pruning or stopping guidance at a
    step the run never reaches (one step, say), or stopping guidance where none runs (guidance at most 1)."""
    from ..recipe import switch_step

    for settings in sizes:
        steps = settings["steps"]
        if settings.get("keep") is not None and switch_step(settings["prune_at"], steps) is None:
            where = "--prune-at" if cfg.prune_at is not None else "prune_at"
            raise PlanError(f"{where}: pruning at {settings['prune_at']:g} of {steps} step(s) would never run (it "
                            "needs a whole step before the last); leave it out, or run more --steps")
        if settings.get("cfg_until") is not None:
            where = "--cfg-until" if cfg.cfg_until is not None else "cfg_until"
            if settings["guidance"] <= 1:
                raise PlanError(f"{where}: guidance is {settings['guidance']:g}, at most 1, so no unconditional "
                                "branch runs for it to stop; leave it out")
            if switch_step(settings["cfg_until"], steps) is None:
                raise PlanError(f"{where}: stopping guidance at {settings['cfg_until']:g} of {steps} step(s) would "
                                "never happen; leave it out, or run more --steps")


def _check_preset_family(preset: str | None, model: str, revision: str | None) -> None:
    """A preset made for one family (SDXL-Lightning) is refused for another, before the model loads."""
    from ..recipe import PRESET_FAMILIES

    if preset not in PRESET_FAMILIES:
        return
    from .families import family_named
    from .loading import peek_architecture

    family = peek_architecture(model, revision)
    if family is not None and family not in PRESET_FAMILIES[preset]:
        wanted = " or ".join(family_named(f).label.split(" ", 1)[1] for f in PRESET_FAMILIES[preset])
        raise PlanError(f"--preset {preset}: made for {wanted} models; '{model}' is {family_named(family).label} "
                        "model")


def verify_origins(cfg: GenerateConfig, recipe: Recipe) -> dict[str, str]:
    """Where each attribute's verifier was given, for error lines: ``--verify ATTR`` or ``RECIPE: verify.ATTR``."""
    given = {t.partition("=")[0] for t in cfg.verify}
    return {a: f"--verify {a}" if a in given else f"{cfg.recipe}: verify.{a}" for a in recipe.attributes}


def local_inputs(cfg: GenerateConfig, recipe: Recipe, model: str, clip_model: str,
                 verify: dict[str, Any]) -> dict[str, Any]:
    """Every local model input of the run pinned by content (:mod:`facesynth.pins`), by role: ``model``,
    ``model_config``, ``clip_model``, ``verify.ATTR``. A path that is not there is one line, never a Hub id."""
    from ..folder.pins import local_path, looks_local, pin

    origins = verify_origins(cfg, recipe)
    roles = {"model": (model, "--model", None), "model_config": (cfg.model_config, "--model-config", True),
             "clip_model": (clip_model, "--clip-model", True)}
    roles.update({f"verify.{a}": (spec.model or spec.zero_shot, origins.get(a, f"verify.{a}"), True)
                  for a, spec in verify.items()})
    sets = recipe.identities
    if sets is not None and sets.embedder != "clip":
        roles["identities.embedder"] = (sets.embedder, "identities.embedder", not sets.embedder.endswith(".onnx"))
    if sets is not None and sets.adapter:
        roles["identities.adapter"] = (sets.adapter, "identities.adapter", None)
    out = {}
    for role, (name, where, folder) in roles.items():
        if name and not is_tiny(name) and looks_local(name):
            out[role] = pin(local_path(name, where, folder))
    return out


def _named(name: str | None) -> str | None:
    """A local path as its file or folder name (its content is pinned in ``inputs``); a Hub id as it is."""
    from ..folder.pins import looks_local

    return Path(name).expanduser().resolve().name if name and not is_tiny(name) and looks_local(name) else name


def run_parameters(cfg: GenerateConfig, recipe: Recipe, plan: Plan, model: str, clip_model: str,
                   overrides: dict[str, Any], per_shard: int, quality: QualityOptions,
                   verify: dict[str, Any] | None = None, adapters: list[Adapter] = (),
                   inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides the dataset's content; resuming requires it unchanged (a run without verifiers, adapters or
    local inputs has the keys it had before they existed). Local paths are named by their file or folder name
    and pinned by content (``inputs``), so ``./x`` and ``x`` are one input and a changed file is a changed one."""
    checked = {"verify": {a: {**spec.model_dump(), "model": _named(spec.model), "zero_shot": _named(spec.zero_shot)}
                          for a, spec in verify.items()},
               "verify_mode": cfg.verify_mode, "crop_margin": cfg.crop_margin} if verify else {}
    if adapters:
        checked["loras"] = [a.parameter() for a in adapters]
    if inputs:
        checked["inputs"] = inputs
    return {**checked,
        "recipe": recipe.fingerprint(),
        "num_samples": plan.num_samples,
        "seed": plan.seed,
        "candidates": cfg.candidates,
        "model": _named(model),
        "revision": cfg.revision,
        "clip_model": _named(clip_model),
        "rerank": cfg.rerank,
        "min_label_confidence": cfg.min_label_confidence,
        "max_attempts": cfg.max_attempts,
        "dtype": cfg.dtype,
        "overrides": overrides,
        "rows_per_shard": per_shard,
        "quality": quality.content(),
    }


def quality_options(cfg: GenerateConfig, model: str) -> QualityOptions:
    """The gates: deduplication at 0.95 unless turned off; faces and safety when asked.

    The tiny preset's random CLIP puts every image within cosine 0.99 of every other,
    so it deduplicates only when given an explicit ``--dedupe-threshold``.
    """
    threshold = cfg.dedupe_threshold
    if threshold is None and not cfg.no_dedupe and not is_tiny(model):
        threshold = DEFAULT_DEDUPE
    if cfg.no_dedupe and cfg.dedupe_threshold is not None:
        raise PlanError("--no-dedupe and --dedupe-threshold: give one or the other")
    options = QualityOptions(faces=cfg.faces, min_face_size=cfg.min_face_size, dedupe_threshold=threshold,
                             safety=cfg.safety, safety_threshold=cfg.safety_threshold, max_refills=cfg.max_refills)
    if options.faces:
        require_cv2()
    return options


def verifier_specs(cfg: GenerateConfig, recipe: Recipe) -> dict[str, Any]:
    """The verifiers this run uses (the recipe's, with ``--verify`` replacing an attribute's), checked."""
    from ..checks.verifiers import MODES, specs

    if cfg.verify_mode not in MODES:
        raise PlanError(f"--verify-mode: '{cfg.verify_mode}' is not one of {', '.join(MODES)}")
    if not 0 <= cfg.crop_margin <= 2 or cfg.crop_margin != cfg.crop_margin:
        raise PlanError(f"--crop-margin: must be between 0 and 2, a fraction of the face box (got {cfg.crop_margin})")
    return specs(recipe, cfg.verify)


def fingerprint(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "facesynth": __version__}
    for pkg in ("torch", "diffusers", "transformers", "datasets", "compel", "huggingface_hub", "pyarrow", "pillow",
                "opencv-python-headless"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def models(cfg: GenerateConfig, recipe: Recipe) -> tuple[str, str]:
    """The diffusion model and the CLIP model a run uses: the command line's, else the recipe's and defaults."""
    model = cfg.model or recipe.model
    if not model:
        raise PlanError(f"recipe '{recipe.name}' names no model: give --model")
    clip_model = cfg.clip_model or ("tiny" if is_tiny(model) else None)
    if clip_model is None:
        from ..checks.scoring import DEFAULT_CLIP

        clip_model = DEFAULT_CLIP
    return model, clip_model
