"""What one attempt makes: every candidate of a sample decoded and scored (:class:`Scored`), the one kept
(:class:`Winner`), and where the time went (:class:`Timings`)."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..checks.quality import Tally
from ..errors import ModelError
from ..plan import Sample, cell_key


class NonFiniteError(ModelError):
    """Every candidate of a batch came out NaN or infinite: no refill can help."""


@dataclass
class Winner:
    """The kept candidate of one sample."""

    sample: Sample
    pixels: np.ndarray  # (H, W, 3) uint8
    seed: int
    candidate_index: int
    candidate_scores: list[float]
    clip_score: float
    label_confidence: float
    attempt: int
    settings: dict[str, Any]
    embedding: np.ndarray  # unit-norm CLIP image embedding
    batch: list[str] = field(default_factory=list)  # sample ids generated in the same batch
    unet_calls: list[int] = field(default_factory=list)  # images per UNet call of that batch
    face_box: list[int] | None = None  # x, y, width, height of the one face (with --faces)
    safety_score: float | None = None  # zero-shot probability of unsafe content (with --safety)
    tally: Tally = field(default_factory=Tally)  # what the gates rejected on the way to this winner
    verified: dict[str, tuple[int, float]] = field(default_factory=dict)  # attribute -> (verdict, p(row's value))
    identity_similarity: float | None = None  # identity sets: the cosine to the reference (1 for the reference)
    identity_embedding: np.ndarray | None = None  # where the identity embedder is not CLIP
    leaks: list[str] = field(default_factory=list)  # fixed attributes whose verdict drifted from the reference's


@dataclass
class Scored:
    """All N candidates of one sample from one attempt, decoded and scored."""

    sample: Sample
    seeds: list[int]
    pixels: np.ndarray  # (N, H, W, 3) uint8
    scores: np.ndarray  # (N,) 100 * cos against the rerank text
    confidence: np.ndarray  # (N,) zero-shot probability of the requested primary label
    embeddings: np.ndarray  # (N, D) unit-norm CLIP image embeddings
    unsafe: np.ndarray | None  # (N,) with --safety
    best: int  # index of the highest score (the first, on ties)
    attempt: int
    settings: dict[str, Any]
    batch: list[str]
    used: list[int]
    indices: list[int] = field(default_factory=list)  # each entry's candidate index (pruning keeps a subset)
    total: int = 0  # candidates started (N); entries above are the ones that ran to the end
    verified: list[dict[str, tuple[int, float]]] | None = None  # per entry, when verified with the whole image
    finite: np.ndarray | None = None  # per entry: no NaN or infinity in its image, embedding or scores
    similarity: np.ndarray | None = None  # identity sets: per entry, the cosine to its reference's same candidate
    identity_embeddings: np.ndarray | None = None  # per entry, where the identity embedder is not CLIP

    def __post_init__(self):
        if not self.indices:
            self.indices = list(range(len(self.seeds)))
        self.total = self.total or len(self.seeds)
        if self.finite is None:
            self.finite = np.ones(len(self.seeds), dtype=bool)


def candidate_scores(scored: Scored) -> list[float | None]:
    """Every candidate's final score by candidate index; None for one pruned before the end."""
    out: list[float | None] = [None] * scored.total
    for k, index in enumerate(scored.indices):
        out[index] = float(scored.scores[k])
    return out


class Timings:
    """Wall seconds per stage; CUDA work is synchronised so time lands in the right stage."""

    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str):
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - start


def non_finite(scored: list[Scored], pipe) -> str:
    """The line for a batch whose every candidate came out NaN or infinite."""
    images = sum(len(s.finite) for s in scored)
    half = getattr(pipe, "dtype", None) == torch.float16
    return (f"the model made NaN or infinite images for all {images} candidates of a batch ("
            f"{', '.join(s.sample.sample_id for s in scored[:3])}{', ...' if len(scored) > 3 else ''}), so no row "
            "can be kept: an adapter with huge weights or a broken checkpoint"
            f"{', or fp16 overflow (try --dtype bf16 or fp32)' if half else ''}; finished shards are kept")


def exhausted(sample: Sample, tally: Tally) -> str:
    """The line for a sample whose every attempt failed the gates."""
    reasons = ", ".join(f"{r} {n}" for r, n in tally.rejected.most_common())
    return (f"sample '{sample.sample_id}' ({cell_key(sample.labels)}): no candidate passed the quality gates "
            f"in {tally.refills} attempts ({tally.checked} candidates: {reasons}); finished shards are kept: "
            "run the same command with a higher --max-refills to resume (it changes only when a sample gives "
            "up); relaxed gates are another dataset: use another folder, or --overwrite")
