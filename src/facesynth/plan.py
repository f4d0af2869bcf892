"""The plan: recipe + size + master seed -> exactly balanced samples.

Pure Python, no torch. Properties the tests check:

- exact quotas: strata counts are met exactly; cross-product cells stay within 1
  of each other for any size;
- prefix stability: sample ``i`` never depends on the requested size, so a larger
  plan keeps every earlier sample unchanged, and every prefix is balanced;
- independent seeds: each candidate seed is a hash of (master seed, sample_id,
  candidate, attempt), so any sample can be regenerated alone;
- splits are deterministic and stratified per label cell.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import PlanError
from .files import atomic_write
from .recipe import Recipe

SEED_BITS = 63
MAX_SAMPLES = 1_000_000  # the plan is held in memory: about 0.7 GB at this size
MAX_CANDIDATES = 64


def derive_seed(master_seed: int, sample_id: str, candidate: int, attempt: int = 0) -> int:
    """A 63-bit seed for one candidate, independent of every other candidate."""
    key = f"facesynth/v1/{master_seed}/{sample_id}/{candidate}/{attempt}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> (64 - SEED_BITS)


def _hash_int(*parts: Any) -> int:
    key = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Sample:
    """One planned row: labels, chosen phrasings, prompts, settings, seeds and split.

    Samples of one plan share equal ``labels``, ``phrases`` and ``settings`` dicts and
    equal captions (a plan holds every sample, so this keeps it small); treat them
    as read-only.
    """

    index: int
    sample_id: str
    labels: dict[str, str]
    phrases: dict[str, str]
    prompt: str
    negative_prompt: str
    caption: str
    settings: dict[str, Any]
    split: str
    seeds: tuple[int, ...]
    master_seed: int = field(repr=False, default=0)

    @property
    def cell(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.labels.items()))

    def candidate_seeds(self, num_candidates: int, attempt: int = 0) -> list[int]:
        """Seeds for ``num_candidates`` candidates of a given attempt."""
        return [derive_seed(self.master_seed, self.sample_id, c, attempt) for c in range(num_candidates)]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["seeds"] = list(self.seeds)
        return data


def deficit_order(weights: Sequence[float], caps: Sequence[int] | None = None) -> Iterator[int]:
    """Indices ``0..len(weights)-1`` so that every prefix is proportional to ``weights``.

    Tijdeman's earliest-deadline rule: at step ``n``, among the indices whose deficit
    ``n * w_i / W - c_i`` is at least ``1 / (2(k - 1))``, take the one whose next
    share falls due first (ties go to the lower index). Every count then stays within
    ``1 - 1 / (2(k - 1))`` of its exact share, for every prefix. Endless, unless ``caps``
    bound each index's count.

    Two heaps make a step ``O(log k)``: indices waiting to turn eligible (by the step
    at which they may), and eligible ones (by deadline).
    """
    k = len(weights)
    total = sum(weights)
    slack = 2 * (k - 1) if k > 1 else 1
    used = [0] * k

    def deadline(i: int) -> tuple[float, int]:
        return (slack * (used[i] + 1) - 1) / weights[i], i

    def eligible(i: int, n: int) -> bool:  # deficit >= 1/slack, multiplied through to stay exact for integers
        return slack * (n * weights[i] - used[i] * total) >= total

    def release(i: int) -> int:  # a step at or before the one where i turns eligible; checked exactly then
        return max(1, math.floor(total * (1 + slack * used[i]) / (slack * weights[i])) - 1)

    alive = {i for i in range(k) if weights[i] > 0 and (caps is None or caps[i] > 0)}
    waiting = sorted((release(i), i) for i in alive)
    ready: list[tuple[float, int]] = []
    n = 0
    while alive:
        n += 1
        while waiting and waiting[0][0] <= n:
            _, i = heapq.heappop(waiting)
            heapq.heappush(ready, deadline(i)) if eligible(i, n) else heapq.heappush(waiting, (n + 1, i))
        if ready:
            best = heapq.heappop(ready)[1]
        else:  # nobody eligible (only near the end of a capped order): the earliest deadline of all
            best = min(alive, key=deadline)
            waiting = [(r, i) for r, i in waiting if i != best]
            heapq.heapify(waiting)
        used[best] += 1
        if caps is not None and used[best] >= caps[best]:
            alive.discard(best)
        else:
            heapq.heappush(waiting, (release(best), best))
        yield best


def smooth_sequence(weights: Sequence[float], length: int) -> list[int]:
    """The first ``length`` indices of :func:`deficit_order`."""
    return list(itertools.islice(deficit_order(weights), length))


class RoundOrder:
    """One round through every cell of a cross product, ordered so each prefix balances every axis.

    Greedy, one axis at a time: the primary label's least used value, then for each
    further axis the value least used together with the values already chosen (pairs),
    then least used alone, among values that still have an unused cell in this round.
    After a full round every count is equal again, so the same order repeats round
    after round and prefixes stay balanced. Cells are made on demand, each in
    ``O(sum of axis sizes)`` numpy work, so a plan costs time in the samples asked
    for, not in the number of cells.
    """

    def __init__(self, sizes: Sequence[int]):
        import numpy as np

        self.np = np
        self.sizes = list(sizes)
        self.size = math.prod(self.sizes)
        m = len(self.sizes)
        self.used = [np.zeros(k, np.int64) for k in self.sizes]
        self.pairs = {(i, j): np.zeros((self.sizes[i], self.sizes[j]), np.int64)
                      for j in range(m) for i in range(j)}
        self.below = [math.prod(self.sizes[j + 1:]) for j in range(m)]  # cells under a prefix of length j + 1
        self.taken: dict[tuple[int, ...], Any] = {}  # prefix -> cells used this round under each next value
        self.cells: list[tuple[int, ...]] = []

    def __getitem__(self, index: int) -> tuple[int, ...]:
        index %= self.size
        while len(self.cells) <= index:
            self.cells.append(self._next())
        return self.cells[index]

    def _next(self) -> tuple[int, ...]:
        np = self.np
        cell: list[int] = []
        scale = len(self.cells) + 2
        for j, k in enumerate(self.sizes):
            cost = np.zeros(k, np.int64)
            for i in range(j):
                cost += self.pairs[(i, j)][cell[i]]
            key = (cost * scale + self.used[j]) * k + np.arange(k)
            taken = self.taken.get(tuple(cell))
            if taken is not None:
                key[taken >= self.below[j]] = np.iinfo(np.int64).max
            cell.append(int(key.argmin()))
        for j, v in enumerate(cell):
            self.used[j][v] += 1
            for i in range(j):
                self.pairs[(i, j)][cell[i], v] += 1
            taken = self.taken.setdefault(tuple(cell[:j]), np.zeros(self.sizes[j], np.int64))
            taken[v] += 1
        return tuple(cell)


def _free_value(values: list[str], attr: str, cell: tuple, k: int) -> str:
    """The k-th value of a free attribute in a cell: each block of ``len(values)`` uses every value once.

    The order within a block is a hashed affine permutation ``(a * pos + b) mod n``, ``a``
    coprime to ``n``: a bijection computed in constant time, however many values there are.
    """
    n = len(values)
    block, pos = divmod(k, n)
    a = _hash_int("free-a", attr, cell, block) % n or 1
    while math.gcd(a, n) != 1:
        a = a % n + 1
    b = _hash_int("free-b", attr, cell, block) % n
    return values[(a * pos + b) % n]


class _SplitSequence:
    """The split pattern, extended lazily (prefix-stable): first each split once (train, validation,
    test), then whichever split is furthest below its share."""

    def __init__(self, ratios: dict[str, float]):
        self.names = list(ratios)
        self.ratios = [ratios[n] for n in self.names]
        self.used = [0] * len(self.names)
        self.seq: list[str] = []

    def __getitem__(self, k: int) -> str:
        while len(self.seq) <= k:
            n = len(self.seq)
            if n < len(self.names):
                i = n
            else:
                i = max(range(len(self.names)), key=lambda j: ((n + 1) * self.ratios[j] - self.used[j], -j))
            self.used[i] += 1
            self.seq.append(self.names[i])
        return self.seq[k]


class Plan:
    """The deterministic plan of a recipe for a size and master seed."""

    def __init__(self, recipe: Recipe, num_samples: int | None = None, seed: int | None = None,
                 num_candidates: int = 3):
        self.recipe = recipe
        self.seed = recipe.seed if seed is None else seed
        self.num_candidates = num_candidates
        if not 1 <= num_candidates <= MAX_CANDIDATES:
            raise PlanError(f"--candidates: must be between 1 and {MAX_CANDIDATES} (got {num_candidates})")
        if not 0 <= self.seed < 2**63:
            raise PlanError(f"--seed: must be between 0 and 2**63-1 (got {self.seed})")
        self.capacity = sum(s.count for s in recipe.strata) if recipe.balance.strata else None
        if num_samples is None:
            if self.capacity is None:
                raise PlanError(f"recipe '{recipe.name}' balances a cross product: give --num-samples")
            num_samples = self.capacity
        if num_samples < 1:
            raise PlanError(f"--num-samples: must be at least 1 (got {num_samples})")
        if self.capacity is not None and num_samples > self.capacity:
            raise PlanError(
                f"--num-samples: {num_samples} exceeds the {self.capacity} samples that the strata of "
                f"recipe '{recipe.name}' add up to"
            )
        if num_samples > MAX_SAMPLES:
            raise PlanError(f"--num-samples: at most {MAX_SAMPLES} per dataset (got {num_samples}); "
                            "split larger collections into several datasets")
        self.num_samples = num_samples
        self._samples: list[Sample] | None = None
        self._shared: dict[tuple, Any] = {}  # equal dicts and strings, stored once

    # Cell order -----------------------------------------------------------------------
    def _cells(self) -> list[dict[str, str]]:
        """The label cell of each sample index, in plan order."""
        r = self.recipe
        if r.balance.cross is not None:
            axes = sorted(r.balance.cross, key=lambda a: a != r.primary)
            grids = [list(r.attributes[a].values) for a in axes]
            order = RoundOrder([len(g) for g in grids])
            return [{a: grids[j][v] for j, (a, v) in enumerate(zip(axes, order[i]))} for i in range(self.num_samples)]
        strata = [s for s in r.strata if s.count > 0]
        counts = [s.count for s in strata]
        order = itertools.islice(deficit_order(counts, caps=counts), self.num_samples)
        return [dict(strata[i].labels) for i in order]

    # Samples --------------------------------------------------------------------------
    @property
    def samples(self) -> list[Sample]:
        if self._samples is None:
            self._samples = list(self._build())
        return self._samples

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __len__(self) -> int:
        return self.num_samples

    def _build(self) -> Iterator[Sample]:
        r = self.recipe
        occurrences: Counter = Counter()
        split_seq = _SplitSequence(r.splits)
        free_values = {name: list(attr.values) for name, attr in r.attributes.items()}
        cells_of_label: Counter = Counter()  # distinct cells seen per primary label
        phase: dict[tuple, int] = {}
        for index, cell in enumerate(self._cells()):
            key = tuple(sorted(cell.items()))
            k = occurrences[key]
            occurrences[key] += 1
            labels = {}
            for name, attr in r.attributes.items():
                if name in cell:
                    labels[name] = cell[name]
                else:  # a free attribute: each block of len(values) occurrences uses every value once
                    labels[name] = _free_value(free_values[name], name, key, k)
            if k == 0:  # the j-th cell of a label starts the split pattern at j: the label's first rows
                label = labels[r.primary]  # take train, validation and test in turn; each cell stays stratified
                phase[key] = cells_of_label[label]
                cells_of_label[label] += 1
            yield self._sample(index, labels, split_seq[k + phase[key]])

    def _sample(self, index: int, labels: dict[str, str], split: str) -> Sample:
        r = self.recipe
        sample_id = f"{r.name}-{index:07d}"
        phrases = {}
        settings = dict(r.settings)
        for name, attr in r.attributes.items():
            value = attr.values[labels[name]]
            phrases[name] = value.phrases[_hash_int("phrase", self.seed, sample_id, name) % len(value.phrases)]
            settings.update(value.generation.overrides())
        captions = {name: attr.caption(labels[name]) for name, attr in r.attributes.items()}
        caption = r.caption_template.format(**captions)
        return Sample(
            index=index,
            sample_id=sample_id,
            labels=self._share("labels", labels),
            phrases=self._share("phrases", phrases),
            prompt=r.template.format(**phrases),
            negative_prompt=r.negative_prompt,
            caption=self._shared.setdefault(("caption", caption), caption),
            settings=self._share("settings", settings),
            split=split,
            seeds=tuple(derive_seed(self.seed, sample_id, c) for c in range(self.num_candidates)),
            master_seed=self.seed,
        )

    def _share(self, kind: str, d: dict[str, Any]) -> dict[str, Any]:
        return self._shared.setdefault((kind, *d.items()), d)

    # Summaries ------------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, Counter]]:
        """attribute -> value -> Counter of split (plus '_total')."""
        out: dict[str, dict[str, Counter]] = {
            a: {v: Counter() for v in attr.values} for a, attr in self.recipe.attributes.items()
        }
        for s in self.samples:
            for a, v in s.labels.items():
                out[a][v][s.split] += 1
                out[a][v]["_total"] += 1
        return out

    def split_sizes(self) -> dict[str, int]:
        sizes = Counter(s.split for s in self.samples)
        return {name: sizes.get(name, 0) for name in self.recipe.splits}

    def by_split(self) -> dict[str, list[Sample]]:
        out: dict[str, list[Sample]] = {name: [] for name in self.recipe.splits}
        for s in self.samples:
            out[s.split].append(s)
        return out

    def write_jsonl(self, path: str | Path) -> None:
        """Write the plan, one sample per line (written to a temp file, then renamed)."""
        with atomic_write(path) as f:
            for s in self.samples:
                f.write(json.dumps(s.to_json(), sort_keys=True, allow_nan=False) + "\n")


def format_counts(plan: Plan, by: str | None = "gender") -> str:
    """A text table per attribute: value, total, one column per split and per value of ``by``."""
    counts = plan.counts()
    splits = list(plan.recipe.splits)
    by_values = list(plan.recipe.attributes[by].values) if by else []
    by_counts: dict[str, dict[str, Counter]] = {a: {} for a in plan.recipe.attributes}
    if by:
        for s in plan.samples:
            for a, v in s.labels.items():
                by_counts[a].setdefault(v, Counter())[s.labels[by]] += 1
    lines = [f"recipe {plan.recipe.name}: {plan.num_samples} samples, seed {plan.seed}, "
             f"{plan.num_candidates} candidates each; splits "
             + ", ".join(f"{k} {v}" for k, v in plan.split_sizes().items())]
    for attr, values in counts.items():
        extra = by_values if by and attr != by else []
        header = [attr, "total", *splits, *extra]
        rows = [[v, c["_total"], *(c[s] for s in splits), *(by_counts[attr].get(v, Counter())[b] for b in extra)]
                for v, c in values.items()]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        lines.append("")
        for row in [header, *rows]:
            lines.append("  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                                   for i, (x, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)
