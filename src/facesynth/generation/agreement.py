"""``facesynth benchmark``: a model run both ways on one plan, exact best-of-N against pruning.

Pruning (``prune_at``/``keep``) and guidance truncation (``cfg_until``) trade a little fidelity to
exact best-of-N for fewer UNet evaluations. How often the pruned run keeps the same winner depends on
the model: only the model's user can measure it, and this is the tool to do it with. Both runs use
the same plan, seeds, model and CLIP; the gates are off, so the figures compare the choice alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..recipe import SPEEDUPS

logger = logging.getLogger(__name__)


@dataclass
class Side:
    """One way of running: its settings and what it produced."""

    name: str
    overrides: dict[str, Any]
    seconds: float = 0.0
    unet_images: int = 0
    kept: int = 0
    winners: list[int] = field(default_factory=list)  # each sample's kept candidate index
    scores: list[float] = field(default_factory=list)  # each sample's kept clip_score

    @property
    def images_per_second(self) -> float:
        return self.kept / self.seconds if self.seconds else 0.0

    @property
    def unet_per_image(self) -> float:
        return self.unet_images / self.kept if self.kept else 0.0

    @property
    def mean_score(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else 0.0


@dataclass
class Agreement:
    """Exact best-of-N next to the pruned run."""

    exact: Side
    pruned: Side
    samples: int
    candidates: int

    @property
    def same_winner(self) -> float:
        """Share of samples whose pruned winner is the exact run's winner."""
        same = sum(a == b for a, b in zip(self.exact.winners, self.pruned.winners))
        return same / self.samples if self.samples else 0.0

    def table(self) -> str:
        rows = [("", "exact best-of-N", "pruned"),
                ("settings", _describe(self.exact.overrides), _describe(self.pruned.overrides)),
                ("UNet evaluations per kept image", f"{self.exact.unet_per_image:.1f}",
                 f"{self.pruned.unet_per_image:.1f}"),
                ("kept images/s", f"{self.exact.images_per_second:.2f}", f"{self.pruned.images_per_second:.2f}"),
                ("mean clip_score", f"{self.exact.mean_score:.3f}", f"{self.pruned.mean_score:.3f}")]
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, width)).rstrip() for r in rows]
        lines.append(f"same winner as exact best-of-{self.candidates}: {self.same_winner:.0%} of {self.samples} "
                     f"samples; speed-up {self.speedup:.2f}x")
        return "\n".join(lines)

    @property
    def speedup(self) -> float:
        if not self.exact.images_per_second:
            return 0.0
        return self.pruned.images_per_second / self.exact.images_per_second


def _describe(overrides: dict[str, Any]) -> str:
    shown = {k: overrides.get(k) for k in SPEEDUPS if overrides.get(k) is not None}
    return ", ".join(f"{k} {v}" for k, v in shown.items()) or "every candidate to the end"


def run_side(engine, samples, side: Side, batch_size: int, progress=None) -> Side:
    """Generate every sample once (first attempt, no gates) and record the winners."""
    engine.options.overrides = {**engine.options.overrides, **side.overrides}
    engine.unet_images = 0
    per_call = max(1, batch_size // engine.options.candidates)
    start = time.perf_counter()
    for i in range(0, len(samples), per_call):
        for win in engine.generate(samples[i:i + per_call], attempt=0):
            side.winners.append(win.candidate_index)
            side.scores.append(win.clip_score)
            side.kept += 1
        if progress is not None:
            progress.update(min(per_call, len(samples) - i))
    side.seconds = time.perf_counter() - start
    side.unet_images = engine.unet_images
    return side


def compare(engine, samples, fast: dict[str, Any], batch_size: int, quiet: bool = True) -> Agreement:
    """Run ``samples`` exactly, then with the ``fast`` settings, on one engine (one model load)."""
    from tqdm.auto import tqdm

    base = dict(engine.options.overrides)
    exact_settings = dict.fromkeys(SPEEDUPS)
    run_side(engine, samples[:1], Side("warm-up", exact_settings), batch_size)  # first-call costs, not timed
    sides = []
    for name, overrides in (("exact", exact_settings), ("pruned", {**exact_settings, **fast})):
        engine.options.overrides = dict(base)
        with tqdm(total=len(samples), desc=name, unit="sample", disable=quiet) as bar:
            sides.append(run_side(engine, samples, Side(name, overrides), batch_size, bar))
    engine.options.overrides = base
    return Agreement(sides[0], sides[1], len(samples), engine.options.candidates)


def benchmark(cfg, quiet: bool = True) -> Agreement:
    """Load ``cfg``'s model once and compare exact best-of-N with ``cfg``'s pruning settings on its plan."""
    from dataclasses import replace

    from ..errors import PlanError
    from .engine import Engine, EngineOptions
    from .adapters import apply, check, chosen, fetch
    from .loading import load_pipeline, resolve_device, resolve_dtype
    from .config import models, settings_overrides
    from ..plan import Plan
    from ..recipe import load_recipe
    from ..checks.scoring import ClipScorer

    recipe = load_recipe(cfg.recipe)
    model, clip_model = models(cfg, recipe)
    if cfg.prune_at is None and cfg.cfg_until is None:
        raise PlanError("give --prune-at with --keep, or --cfg-until, or both: the settings to compare with "
                        "exact best-of-N")
    if cfg.batch_size < 1:
        raise PlanError("--batch-size: must be at least 1")
    fast = settings_overrides(cfg, model)  # checks the pruning settings like generate does
    base = settings_overrides(replace(cfg, prune_at=None, keep=None, cfg_until=None), model)
    plan = Plan(recipe, cfg.num_samples, cfg.seed, cfg.candidates)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    adapters = fetch(check(chosen(cfg.lora, recipe, cfg.recipe)))
    pipe, _ = load_pipeline(model, revision=cfg.revision, dtype=dtype, device=device, config=cfg.model_config)
    apply(pipe, adapters, model)
    scorer = ClipScorer.load(clip_model, device=device, dtype=dtype)
    engine = Engine(pipe, scorer, recipe, EngineOptions(candidates=cfg.candidates, batch_size=cfg.batch_size,
                                                        rerank=cfg.rerank, overrides=base))
    engine.check(plan.samples)
    wanted = {k: fast[k] for k in SPEEDUPS if k in fast}
    return compare(engine, plan.samples, wanted, cfg.batch_size, quiet)
