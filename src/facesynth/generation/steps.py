"""Mid-call changes to a diffusers denoising loop: candidate pruning and guidance truncation.

Both are opt-in settings (``prune_at`` with ``keep``, and ``cfg_until``) and both work through the
pipeline's ``callback_on_step_end``, so the pipeline's own loop, scheduler and conditioning stay
in charge:

- **pruning**: after ``round(prune_at * steps)`` steps, every candidate's clean-image prediction
  (the scheduler's ``x0``) is decoded (at the smallest size that still gives CLIP its full input
  resolution) and scored by the same CLIP, rerank text and gates as the final images, and only each sample's best ``keep`` candidates go on. Every tensor that holds one
  row per image (latents, conditioning, the scheduler's history of multistep solvers, the per-image
  generators) is cut to the survivors, so a survivor's trajectory is the one it had in an unpruned
  call: same seed, same noise, same steps.
- **guidance truncation**: after ``round(cfg_until * steps)`` steps, the unconditional half of the
  batch is dropped and guidance is turned off, as in diffusers' documented dynamic-CFG callback.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..plan import cell_key
from ..recipe import switch_step

if TYPE_CHECKING:
    from ..plan import Sample
    from ..checks.quality import Gates, QualityOptions
    from ..checks.scoring import ClipScorer


class Engine(Protocol):
    """What a step hook uses of the engine that runs it (``engine.Engine``; named here, not imported, so the
    engine and its hook import in one direction only)."""

    pipe: Any
    scorer: "ClipScorer"
    gates: "Gates"
    quality: "QualityOptions"

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def rerank_text(self, sample: "Sample") -> str: ...

    def unsafe(self, img_emb: torch.Tensor) -> torch.Tensor: ...

logger = logging.getLogger(__name__)

# Callback tensors with one row per image (twice as many rows while guidance runs: unconditional first).
BATCHED = ("latents", "prompt_embeds", "pooled_prompt_embeds", "add_text_embeds", "add_time_ids")
# Scheduler attributes that hold one row per image between steps (multistep solvers' history).
SCHEDULER_STATE = ("model_outputs", "ets", "last_sample", "cur_sample", "cur_model_output")


class StepHook:
    """``callback_on_step_end`` for one pipeline call; ``kept`` lists each sample's surviving candidates."""

    def __init__(self, engine: "Engine", settings: dict[str, Any], samples: Sequence["Sample"],
                 generators: list[torch.Generator]):
        steps = settings["steps"]
        self.width, self.height = settings["width"], settings["height"]
        self.engine = engine
        self.samples = list(samples)
        self.n = len(generators) // len(self.samples) if self.samples else 1
        self.generators = generators
        self.call_size = len(generators)  # images the call started with
        keep = settings.get("keep")
        self.keep = keep if keep is not None and self.samples else None
        self.prune = switch_step(settings.get("prune_at"), steps) if self.keep is not None else None
        self.cfg = switch_step(settings.get("cfg_until"), steps)
        self.kept = [list(range(self.n)) for _ in self.samples]
        self.size = len(generators)  # images in the batch now
        self.evaluations = 0
        self.seconds = 0.0  # spent on previews
        self.x0: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None  # the images of the call that survived pruning, once it has run
        self.sets = None  # identity sets' shared-attention state (.sets.SetState), when the call shares
        self._steps_seen = 0

    def tensor_inputs(self, pipe) -> list[str]:
        return [name for name in BATCHED if name in pipe._callback_tensor_inputs]

    @contextmanager
    def watching(self, scheduler):
        """Capture the clean-image prediction at the prune step from the scheduler's own ``step``."""
        if self.prune is None:
            yield
            return
        original = scheduler.step

        @functools.wraps(original)  # keeps step's signature: the pipeline passes generator/eta by it
        def step(model_output, timestep, sample, *args, **kwargs):
            result = original(model_output, timestep, sample, *args, **kwargs)
            self._steps_seen += 1
            if self._steps_seen == self.prune:
                self.x0 = clean_prediction(scheduler, model_output, timestep, sample, result)
            return result

        scheduler.step = step
        try:
            yield
        finally:
            del scheduler.step  # the class's method again

    def __call__(self, pipe, i: int, t, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        guided = getattr(pipe, "do_classifier_free_guidance", False)  # FLUX runs no unconditional branch
        self.evaluations += self.size * (2 if guided else 1)
        out: dict[str, torch.Tensor] = {}
        if self.prune is not None and i == self.prune - 1:
            chosen = self._choose()
            rows = torch.tensor([g * self.n + j for g, kept in enumerate(chosen) for j in kept],
                                device=tensors["latents"].device)
            for name, value in tensors.items():
                out[name] = _rows(name, value, rows, self.size, guided)
            self.generators[:] = [self.generators[r] for r in rows.tolist()]  # the scheduler's noise, per image
            _cut_scheduler(pipe.scheduler, rows, self.size)
            self.kept, self.size, self.rows = chosen, len(rows), rows
            if self.sets is not None:
                self.sets.cut(rows.cpu())
        if self.cfg is not None and i == self.cfg - 1 and guided:
            for name in tensors:
                if name != "latents":
                    value = out.get(name, tensors[name])
                    out[name] = value[value.shape[0] // 2:]  # the conditional half
            pipe._guidance_scale = 0.0  # the pipeline stops guiding (its dynamic-CFG recipe)
        if self.sets is not None:
            self.sets.step_done(i)
        return out

    def _choose(self) -> list[list[int]]:
        """Each sample's best ``keep`` candidates by their previews, in candidate order."""
        engine, start = self.engine, time.perf_counter()
        x0 = engine.family.unpack(engine.pipe, self.x0, self.width, self.height)
        factor = preview_factor(x0.shape[-2:], engine.pipe.vae_scale_factor, engine.scorer.size)
        images = engine.decode(x0 if factor == 1 else torch.nn.functional.avg_pool2d(x0.float(), factor).to(x0.dtype))
        emb = engine.scorer.image_embeddings(images)
        texts = engine.scorer.text_embeddings([engine.rerank_text(s) for s in self.samples])
        scores = engine.scorer.similarity(emb, texts.repeat_interleave(self.n, 0)).view(len(self.samples), self.n)
        scores = scores.float().cpu().numpy()
        failed = ~np.isfinite(scores)  # a preview with NaN or infinity ranks after every finite one
        scores = np.where(failed, -np.inf, scores)
        if engine.gates.active:  # a preview that fails a gate ranks after every one that passes
            from .family import to_uint8

            pixels, emb_cpu = to_uint8(images), emb.float().cpu().numpy()
            unsafe = engine.unsafe(emb).float().cpu().numpy() if engine.quality.safety else None
            for g, sample in enumerate(self.samples):
                for j in range(self.n):
                    k = g * self.n + j
                    reason, _ = engine.gates.check(pixels[k], emb_cpu[k], None if unsafe is None else unsafe[k],
                                                   cell_key(sample.labels))
                    failed[g, j] |= reason is not None
        for members in _set_members(self.samples):  # a set keeps the same candidates for every member: the
            failed[members] = failed[members].any(0)  # sets whose weakest member previews best
            scores[members] = scores[members].min(0)
        chosen = [sorted(sorted(range(self.n), key=lambda j: (failed[g, j], -scores[g, j], j))[:self.keep])
                  for g in range(len(self.samples))]
        self.seconds += time.perf_counter() - start
        return chosen


def _set_members(samples: Sequence["Sample"]) -> list[list[int]]:
    """The indices of each identity set's members in a call (none for rows of their own)."""
    sets: dict[str, list[int]] = {}
    for g, sample in enumerate(samples):
        if getattr(sample, "identity", None):
            sets.setdefault(sample.identity, []).append(g)
    return [members for members in sets.values() if len(members) > 1]


@contextmanager
def cutting_inputs(module: torch.nn.Module, hook: StepHook, names: Sequence[str]):
    """Cut ``module``'s keyword inputs ``names`` to the surviving images, for a pipeline that computes them once
    before its loop and keeps them out of the step callback's reach (FLUX's pooled embeddings and guidance):
    once pruning has run, each still has a row per image of the whole call, and the survivors' rows are kept."""
    def cut(_module, args, kwargs):
        if hook.rows is None:
            return None
        for name in names:
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == hook.call_size:
                kwargs[name] = value[hook.rows.to(value.device)]
        return args, kwargs

    handle = module.register_forward_pre_hook(cut, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def preview_factor(latent_size: Sequence[int], vae_scale: int, clip_size: int) -> int:
    """How much smaller than the image a preview can be decoded: CLIP resizes every image to ``clip_size``
    anyway, so the latents are average-pooled by the largest power of two that keeps the preview's
    shorter side at ``clip_size`` or more (SD 1.5 at 512 px: 2, a 256 px preview for a 224 px CLIP).
    The VAE decode, which costs as much as several UNet steps, then works on a quarter of the pixels."""
    factor = 1
    while all(side % (2 * factor) == 0 for side in latent_size) and \
            min(latent_size) * vae_scale // (2 * factor) >= clip_size:
        factor *= 2
    return factor


def clean_prediction(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor,
                     result) -> torch.Tensor:
    """The scheduler's prediction of the clean latents at this step.

    Schedulers that return it (DDIM, Euler) are taken at their word; flow-matching ones (SD 3) give it from
    the velocity; the others (PNDM, DPM-Solver, UniPC) keep variance-preserving latents, from which it
    follows by the model's parameterisation.
    """
    if isinstance(result, tuple) and len(result) > 1 and isinstance(result[1], torch.Tensor):
        return result[1]
    if not hasattr(scheduler, "alphas_cumprod") and hasattr(scheduler, "sigmas"):
        # flow matching: x_t = (1 - sigma) x0 + sigma noise and the model predicts v = noise - x0; the step has
        # moved the scheduler's index on, so this step's sigma is the one before it
        sigma = scheduler.sigmas[scheduler.step_index - 1].to(sample.device, torch.float32)
        return (sample.to(torch.float32) - sigma * model_output.to(torch.float32)).to(sample.dtype)
    alpha = scheduler.alphas_cumprod.to(sample.device)[int(timestep)].to(torch.float32)
    x, out = sample.to(torch.float32), model_output.to(torch.float32)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        x0 = (x - (1 - alpha).sqrt() * out) / alpha.sqrt()
    elif kind == "v_prediction":
        x0 = alpha.sqrt() * x - (1 - alpha).sqrt() * out
    else:  # "sample"
        x0 = out
    return x0.to(sample.dtype)


def _rows(name: str, value: torch.Tensor, rows: torch.Tensor, size: int, guided: bool) -> torch.Tensor:
    """A callback tensor cut to the surviving images."""
    if name == "add_time_ids":  # every row is the same (the pipeline repeats one pair): keep as many
        return value[: value.shape[0] * len(rows) // size]
    if guided and name != "latents":  # unconditional rows first, then the conditional ones
        return torch.cat([value[:size][rows], value[size:][rows]])
    return value[rows]


def _cut_scheduler(scheduler, rows: torch.Tensor, size: int) -> None:
    """Cut the scheduler's per-image history (multistep solvers) to the surviving images."""
    for name in SCHEDULER_STATE:
        value = getattr(scheduler, name, None)
        if isinstance(value, torch.Tensor) and value.shape[:1] == (size,):
            setattr(scheduler, name, value[rows.to(value.device)])
        elif isinstance(value, list):
            setattr(scheduler, name, [v[rows.to(v.device)] if isinstance(v, torch.Tensor) and v.shape[:1] == (size,)
                                      else v for v in value])
