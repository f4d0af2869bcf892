"""Best-of-N generation with CLIP reranking.

Several samples x N candidates go through one pipeline call. Every candidate has
its own CPU ``torch.Generator`` seeded from the plan, and every sample's prompt
embeddings are computed alone, so a sample's pixels do not depend on what else is
in its batch (up to floating-point noise of batched kernels). Batches only join
samples with equal settings and equal conditioning length: consecutive ones, or, for
a group of small shards, any of the group's (:meth:`Engine.batches`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..plan import Sample, cell_key
from ..checks.quality import NON_FINITE, SAFE_TEXTS, UNSAFE_TEXTS, Gates, QualityOptions, QuotaError, Tally
from ..recipe import Recipe
from ..checks.scoring import ClipScorer
from ..checks.identity import Embedder
from ..checks.verifiers import Verifier, failed, verify
from ..recipe.identities import CLIP_EMBEDDER
from .loading import make_scheduler
from .families import family_of
from .family import check_size, to_uint8
from .prompts import Conditioning
from .candidates import NonFiniteError, Scored, Timings, Winner, candidate_scores, exhausted, non_finite
from .reference import denoise as reference_denoise
from .set_engine import check_sets, identity_scores, run_sets, units
from .sets import SetState, reference_rows, sharing
from .steps import StepHook

logger = logging.getLogger(__name__)

RERANK_MODES = ("caption", "prompt")




@dataclass
class EngineOptions:
    """How candidates are made and chosen."""

    candidates: int = 3
    batch_size: int = 12  # images per pipeline call
    rerank: str = "caption"  # what CLIP scores against: the attribute caption or the full prompt
    min_label_confidence: float | None = None
    max_attempts: int = 3
    overrides: dict[str, Any] = field(default_factory=dict)  # settings that beat the recipe's
    verify_mode: str = "gate"  # gate: a disputed candidate is rejected; record: the verdicts are only recorded
    crop_margin: float = 0.25  # verifiers see the face box padded by this fraction of its size each side


class Engine:
    """Turns planned samples into winners."""

    def __init__(self, pipe, scorer: ClipScorer, recipe: Recipe, options: EngineOptions,
                 quality: QualityOptions | None = None, verifiers: Sequence[Verifier] = ()):
        if options.rerank not in RERANK_MODES:
            raise ValueError(f"rerank must be one of {RERANK_MODES}")
        self.pipe = pipe
        self.scorer = scorer
        self.recipe = recipe
        self.options = options
        self.quality = quality or QualityOptions()
        self.gates = Gates(self.quality)
        self.verifiers = list(verifiers)
        self.crop_faces = self.quality.faces  # verifiers see each candidate's face crop, so verify it when checked
        self.family = family_of(pipe)
        self.encoder = self.family.encoder(pipe)
        self.embedder = Embedder(CLIP_EMBEDDER, "clip", device=pipe.device)  # identity sets' (see .checks.identity)
        self.device = pipe.device
        self.timings = Timings(self.device)
        self._base_scheduler = pipe.scheduler
        self._schedulers: dict[str, Any] = {}
        self.max_images: int | None = None  # images per pipeline call; set when memory runs out
        self.unet_images = 0  # image evaluations of the UNet (a guided step counts 2), for the benchmarks
        # With torch.compile: every call is padded to this many images with throwaway candidates, so the
        # compiled UNet sees one batch shape (and compiles once) instead of one per smaller last batch.
        self.pad_to: int | None = None
        primary = recipe.attributes[recipe.primary]
        self.label_values = list(primary.values)
        self.label_texts = [primary.label_prompt.format(primary.caption(v)) for v in self.label_values]

    def settings_for(self, sample: Sample) -> dict[str, Any]:
        return {**sample.settings, **self.options.overrides}

    def check(self, samples: Sequence[Sample]) -> None:
        """Refuse, in one line, what the model's family cannot do with these samples (before any is made), then say
        what the settings leave unused."""
        settings = [self.settings_for(s) for s in samples]
        self.family.check(samples, settings)
        check_size(self.family, self.pipe, settings)
        check_sets(self, samples)
        unguided = sum(1 for s, st in zip(samples, settings) if st["guidance"] <= 1 and s.negative_prompt)
        if unguided:  # diffusers runs classifier-free guidance only above 1: no unconditional branch, no negative
            logger.warning("guidance at or below 1 for %d of %d samples: no unconditional branch runs for them, so "
                           "their negative prompt is unused (it stays in the negative_prompt column)", unguided,
                           len(samples))

    def rerank_text(self, sample: Sample) -> str:
        return sample.caption if self.options.rerank == "caption" else sample.prompt

    # Batching ---------------------------------------------------------------------------
    def run(self, samples: Sequence[Sample], batch_size: int | None = None,
            first_attempt: dict[str, int] | None = None) -> Iterator[Winner]:
        """Winners in input order; consecutive samples that can share a call are batched.

        ``first_attempt`` starts some samples at a later attempt (fresh seeds: a row rejected
        in review); a call holds samples of one attempt, so every row can be run again.
        """
        for batch, attempt in self.batches(samples, batch_size, first_attempt):
            yield from self.run_batch(batch, attempt)

    def batches(self, samples: Sequence[Sample], batch_size: int | None = None,
                first_attempt: dict[str, int] | None = None, pooled: bool = False) -> Iterator[tuple[list[Sample], int]]:
        """The calls ``samples`` go through, each with its attempt: samples with equal settings, conditioning
        length and attempt, at most ``batch_size // candidates`` of them.

        By default a call joins consecutive samples only. ``pooled`` joins them from anywhere in ``samples``:
        each key fills its own call, in the order of its first sample, and calls that are not full come last.
        """
        per_call = max(1, (batch_size or self.options.batch_size) // self.options.candidates)
        first_attempt = first_attempt or {}
        open_calls: dict[tuple, list[Sample]] = {}
        for unit in units(samples):  # a set's members always share a call (a call may then hold more)
            key = (*self._batch_key(unit[0]), first_attempt.get(unit[0].sample_id, 0))
            if not pooled and open_calls and key not in open_calls:
                yield from ((b, k[-1]) for k, b in open_calls.items())
                open_calls = {}
            batch = open_calls.setdefault(key, [])
            batch.extend(unit)
            if len(batch) >= per_call:
                yield open_calls.pop(key), key[-1]
        yield from ((b, k[-1]) for k, b in open_calls.items())

    def _batch_key(self, sample: Sample) -> tuple:
        with self.timings.stage("text"):
            cond = self.encoder.encode(sample.prompt, sample.negative_prompt)
        return tuple(sorted(self.settings_for(sample).items())), cond.length

    def run_batch(self, samples: Sequence[Sample], first_attempt: int = 0) -> list[Winner]:
        """One batch, with refills and label-confidence retries; returns winners in input order.

        Every round generates the samples still open at the next attempt (fresh seeds).
        A sample stays open while none of its candidates passed the gates (at most
        ``max_refills`` extra rounds) or while its label confidence is below the
        threshold (at most ``max_attempts`` rounds; the most confident winner is kept).
        """
        if self.recipe.identities is not None:
            return run_sets(self, samples, first_attempt)
        opts = self.options
        best: dict[str, Winner] = {}
        tallies = {s.sample_id: Tally() for s in samples}
        todo = list(samples)
        attempt = first_attempt
        while todo:
            retry = []
            round_ = self.candidates(todo, attempt)
            if not any(scored.finite.any() for scored in round_):
                raise NonFiniteError(non_finite(round_, self.pipe))
            for scored in round_:
                sid = scored.sample.sample_id
                win = self._choose(scored, best, tallies[sid])
                kept = best.get(sid)
                if win is not None and (kept is None or win.label_confidence > kept.label_confidence):
                    best[sid] = kept = win
                if kept is None:
                    tallies[sid].refills += 1
                    if tallies[sid].refills > self.quality.max_refills:
                        raise QuotaError(exhausted(scored.sample, tallies[sid]))
                    retry.append(scored.sample)
                elif (opts.min_label_confidence is not None and kept.label_confidence < opts.min_label_confidence
                      and attempt + 1 - first_attempt < opts.max_attempts):
                    retry.append(scored.sample)
            if retry:
                logger.debug("generating %d samples again (attempt %d)", len(retry), attempt + 1)
            todo = retry
            attempt += 1
        winners = [best[s.sample_id] for s in samples]
        for win in winners:
            win.tally = tallies[win.sample.sample_id]
            self.gates.accept(cell_key(win.sample.labels), win.embedding)
        return winners

    def _choose(self, scored: "Scored", chosen: dict[str, Winner], tally: Tally) -> Winner | None:
        """The best-scoring candidate that passes the gates (and, with ``verify_mode`` gate, its verifiers), or None."""
        gating = bool(self.verifiers) and self.options.verify_mode == "gate"
        broken = int((~scored.finite).sum())
        if broken:
            tally.checked += broken
            tally.rejected[NON_FINITE] += broken
            if broken == len(scored.finite):
                return None
        if not self.gates.active and not gating:
            tally.checked += 1
            return self.pick(scored, scored.best, verified=self.verified(scored, scored.best, None))
        cell = cell_key(scored.sample.labels)
        pending = []  # rows of this cell chosen earlier in the batch, for deduplication
        if self.gates.index is not None:
            pending = [w.embedding for sid, w in chosen.items()
                       if sid != scored.sample.sample_id and cell_key(w.sample.labels) == cell]
        for k in sorted(np.flatnonzero(scored.finite), key=lambda k: (-scored.scores[k], k)):
            tally.checked += 1
            unsafe = None if scored.unsafe is None else scored.unsafe[k]
            reason, box = self.gates.check(scored.pixels[k], scored.embeddings[k], unsafe, cell, pending)
            if reason is None:
                result = self.verified(scored, k, box)
                attr = failed(self.verifiers, result, scored.sample.labels) if gating else None
                if attr is None:
                    return self.pick(scored, k, box, result)
                reason = f"verify:{attr}"
            tally.rejected[reason] += 1
        return None

    def verified(self, scored: "Scored", k: int, box: Sequence[int] | None) -> dict[str, tuple[int, float]]:
        """The verifiers' verdicts on entry ``k``: computed with the batch, or now for its face crop."""
        if not self.verifiers:
            return {}
        if scored.verified is not None:
            return scored.verified[k]
        with self.timings.stage("verify"):
            return verify(self.verifiers, scored.pixels[k:k + 1], [box], [scored.sample.labels],
                          self.options.crop_margin)[0]

    # One pipeline call ------------------------------------------------------------------
    def _scheduler(self, name: str):
        if name == "default":
            return self._base_scheduler
        if name not in self._schedulers:
            self._schedulers[name] = make_scheduler(name, self._base_scheduler.config)
        return self._schedulers[name]

    @torch.inference_mode()
    def generate(self, samples: Sequence[Sample], attempt: int, calls: Sequence[int] | None = None) -> list[Winner]:
        """One attempt for a batch without gates: every sample's N candidates, scored, the best kept."""
        return [self.pick(scored, scored.best) for scored in self.candidates(samples, attempt, calls)]

    @torch.inference_mode()
    def candidates(self, samples: Sequence[Sample], attempt: int,
                   calls: Sequence[int] | None = None) -> list["Scored"]:
        """One attempt for a batch: every sample's N candidates, decoded and scored.

        ``calls`` forces the images per UNet call (what a winner's ``unet_calls`` records),
        so a batch can be run again exactly as it first ran.
        """
        n = self.options.candidates
        settings = self.settings_for(samples[0])
        if settings.get("keep") is not None and settings["keep"] >= n:
            raise ValueError(f"keep ({settings['keep']}) must be below the number of candidates ({n})")
        conds = [self.encoder.encode(s.prompt, s.negative_prompt) for s in samples]
        seeds = [s.candidate_seeds(n, attempt) for s in samples]
        flat_conds, flat_seeds = [c for c in conds for _ in range(n)], [x for row in seeds for x in row]
        with self.timings.stage("unet"):
            if self.recipe.identities is not None and self.recipe.identities.mechanism == "reference":
                latents, used, kept = reference_denoise(self, flat_conds, flat_seeds, settings, calls, samples, n)
            else:
                latents, used, kept = self.denoise(flat_conds, flat_seeds, settings, calls, samples)
        m = len(kept[0])  # candidates per sample that ran to the end
        with self.timings.stage("vae"):
            images = self.decode(latents)
        with self.timings.stage("clip"):
            img_emb = self.scorer.image_embeddings(images)
            text_emb = self.scorer.text_embeddings([self.rerank_text(s) for s in samples]).repeat_interleave(m, 0)
            scores = self.scorer.similarity(img_emb, text_emb).view(len(samples), m)
            probs = self.scorer.label_probabilities(img_emb, self.label_texts)
            wanted = torch.tensor(
                [self.label_values.index(s.labels[self.recipe.primary]) for s in samples], device=probs.device
            ).repeat_interleave(m)
            confidence = probs.gather(1, wanted[:, None]).view(len(samples), m)
            unsafe = None
            if self.quality.safety:
                unsafe = self.unsafe(img_emb).view(len(samples), m).cpu().numpy()
            # NaN or infinity anywhere (pixels, embedding, score): a rejected candidate, never a row
            finite = (torch.isfinite(images.flatten(1)).all(1) & torch.isfinite(img_emb).all(1)
                      & torch.isfinite(scores.flatten()) & torch.isfinite(confidence.flatten())).view(len(samples), m)
            scores = torch.where(finite, scores, torch.full_like(scores, -torch.inf))
            best = scores.argmax(dim=1).cpu()  # the first maximum wins ties
            pixels = to_uint8(torch.nan_to_num(images)).reshape(len(samples), m, *images.shape[2:], 3)
            scores_cpu, conf_cpu = scores.cpu().numpy(), confidence.cpu().numpy()
            emb_cpu = img_emb.cpu().numpy().reshape(len(samples), m, -1)
            finite_cpu = finite.cpu().numpy()
        identity = identity_scores(self, samples, pixels, emb_cpu)
        verified = None
        if self.verifiers and not self.crop_faces:  # every candidate at once; with --faces, each crop when checked
            with self.timings.stage("verify"):
                flat = verify(self.verifiers, pixels.reshape(-1, *pixels.shape[2:]), [None] * len(samples) * m,
                              [s.labels for s in samples for _ in range(m)], self.options.crop_margin)
            verified = [flat[i * m:(i + 1) * m] for i in range(len(samples))]
        batch = [s.sample_id for s in samples]
        return [Scored(sample, [seeds[i][j] for j in kept[i]], pixels[i], scores_cpu[i], conf_cpu[i], emb_cpu[i],
                       None if unsafe is None else unsafe[i], int(best[i]), attempt, settings, batch, used,
                       indices=kept[i], total=n, verified=None if verified is None else verified[i],
                       finite=finite_cpu[i], similarity=None if identity is None else identity[0][i],
                       identity_embeddings=None if identity is None or identity[1] is None else identity[1][i])
                for i, sample in enumerate(samples)]

    def unsafe(self, img_emb: torch.Tensor) -> torch.Tensor:
        """Zero-shot probability that each image is unsafe."""
        probs = self.scorer.label_probabilities(img_emb, UNSAFE_TEXTS + SAFE_TEXTS)
        return probs[:, :len(UNSAFE_TEXTS)].sum(-1)

    def pick(self, scored: "Scored", k: int, face_box: Sequence[int] | None = None,
             verified: dict[str, tuple[int, float]] | None = None) -> Winner:
        """Candidate ``k`` of a scored sample as the sample's winner."""
        return Winner(
            sample=scored.sample, pixels=scored.pixels[k], seed=scored.seeds[k], candidate_index=scored.indices[k],
            candidate_scores=candidate_scores(scored),
            clip_score=float(self.scorer.clip_score(torch.tensor(scored.scores[k]))),
            label_confidence=float(scored.confidence[k]), attempt=scored.attempt, settings=scored.settings,
            embedding=scored.embeddings[k], batch=scored.batch, unet_calls=scored.used,
            face_box=None if face_box is None else [int(v) for v in face_box],
            safety_score=None if scored.unsafe is None else float(scored.unsafe[k]),
            verified=verified if verified is not None else self.verified(scored, k, face_box),
            identity_similarity=None if scored.similarity is None else float(scored.similarity[k]),
            identity_embedding=None if scored.identity_embeddings is None else scored.identity_embeddings[k],
        )

    def denoise(self, conds: Sequence[Conditioning], seeds: Sequence[int], settings: dict[str, Any],
                calls: Sequence[int] | None = None, samples: Sequence[Sample] | None = None,
                ip: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int], list[list[int]]]:
        """Latents for one image per (conditioning, seed), the images per UNet call, and the survivors.

        ``samples`` (one per N consecutive seeds) lets ``prune_at``/``keep`` settings prune each
        sample's candidates; the survivors are the candidate indices of each sample whose latents
        are returned (all N without pruning). Calls hold at most ``max_images`` images (whole
        samples when pruning). On out-of-memory that is halved, logged and kept for the rest of
        the run. Batched kernels can round differently for other call sizes, so the sizes are
        returned for the rows to record. ``ip`` gives each image an IP-Adapter image embedding (identity sets'
        ``reference`` mechanism, :mod:`.reference`).
        """
        self.pipe.scheduler = self._scheduler(settings["scheduler"])
        n = len(seeds) // len(samples) if samples else 1
        parts, used, kept, start = [], [], [], 0
        forced = list(calls or [])
        while start < len(seeds):
            if forced:
                size = forced[len(used)]
            else:
                size = min(self.max_images or len(seeds), len(seeds) - start)
                if samples:
                    unit = n * max((len(u) for u in units(samples)), default=1)  # a set's images share a call
                    size = max(unit, size // unit * unit)  # and a sample's candidates are pruned together
                if self.pad_to and self.max_images is None:
                    size = max(size, self.pad_to)
            real = min(size, len(seeds) - start)
            try:
                call_conds, call_seeds, group = self._padded(conds, seeds, samples, start, real, size, n)
                call_ip = None if ip is None else torch.cat([ip[start:start + real],
                                                             ip[start + real - 1:start + real].expand(size - real, -1)])
                latents, survivors = self._call(call_conds, call_seeds, settings, group, call_ip)
            except torch.OutOfMemoryError:
                if size <= n * max((len(u) for u in units(samples or [])), default=1) or forced:
                    raise
                self.max_images = size // 2
                logger.warning("out of memory at %d images per call; continuing with %d", size, self.max_images)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            survivors = survivors[:real // n]  # padding is thrown away
            parts.append(latents[:len(survivors[0]) * len(survivors) if samples else real])
            kept.extend(survivors)
            used.append(size)  # the padded size: reproducing the row pads the same way
            start += real
        return torch.cat(parts), used, kept

    @staticmethod
    def _padded(conds, seeds, samples, start: int, real: int, size: int, n: int):
        """The call's conditionings, seeds and samples, padded to ``size`` images by repeating the last one."""
        pad = size - real
        call_conds = list(conds[start:start + real]) + [conds[start + real - 1]] * pad
        call_seeds = list(seeds[start:start + real]) + [0] * pad
        group = None
        if samples:
            group = list(samples[start // n:(start + real) // n])
            group += [group[-1]] * (pad // n)
        return call_conds, call_seeds, group

    def _call(self, conds: Sequence[Conditioning], seeds: Sequence[int], settings: dict[str, Any],
              samples: Sequence[Sample] | None = None, ip: torch.Tensor | None = None,
              ) -> tuple[torch.Tensor, list[list[int]]]:
        """One pipeline call, returning the latents and each sample's surviving candidate indices."""
        kwargs: dict[str, Any] = self.family.call_inputs(conds)
        if ip is not None:  # one image embedding per image; the unconditional half gets zeros, as diffusers does
            embeds = ip[:, None].to(self.device, self.pipe.unet.dtype)
            kwargs["ip_adapter_image_embeds"] = [torch.cat([torch.zeros_like(embeds), embeds])
                                                 if settings["guidance"] > 1 else embeds]
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        hook = StepHook(self, settings, samples or [], generators)
        spec = self.recipe.identities
        shared = bool(samples) and spec is not None and spec.mechanism == "shared-attention" and spec.strength > 0
        refs = reference_rows(samples, len(seeds) // len(samples)) if shared else None
        if refs is not None:
            hook.sets = SetState(refs, spec.strength, spec.steps, settings["steps"])
        with hook.watching(self.pipe.scheduler), self.family.watching(self.pipe, hook), sharing(self.pipe, hook.sets):
            latents = self.pipe(
                **kwargs, num_inference_steps=settings["steps"], guidance_scale=settings["guidance"],
                width=settings["width"], height=settings["height"], generator=generators, output_type="latent",
                callback_on_step_end=hook, callback_on_step_end_tensor_inputs=hook.tensor_inputs(self.pipe),
            ).images
        latents = self.family.unpack(self.pipe, latents, settings["width"], settings["height"])
        self.unet_images += hook.evaluations
        self.timings.seconds["preview"] += hook.seconds
        self.timings.seconds["unet"] -= hook.seconds  # the previews ran inside the UNet stage
        return latents, hook.kept

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to float images in [0, 1], as the pipeline's family decodes them."""
        return self.family.decode(self.pipe.vae, latents)
