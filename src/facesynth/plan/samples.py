"""The plan: recipe + size + master seed -> exactly balanced samples.

Pure Python, no torch. Properties the tests check:

- exact quotas: strata counts are met exactly; cross-product cells stay within 1
  of each other for any size;
- prefix stability: sample ``i`` never depends on the requested size, so a larger
  plan keeps every earlier sample unchanged; every prefix has each cross axis and
  each free attribute within 1 of equal (see ``balance``);
- independent seeds: each candidate seed is a hash of (master seed, sample_id,
  candidate, attempt), so any sample can be regenerated alone;
- splits are deterministic, sample by sample, balanced over the plan, every attribute
  value and every primary label x attribute value (searched per shape for small cross
  products, see ``split_order``).
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

import numpy as np

from .balance import FreeLabels, Splits
from .cross_order import CrossOrder, cross_order
from ..errors import PlanError
from ..folder.files import atomic_write
from ..recipe import Recipe
from .split_order import SplitTable, split_table
from ..recipe.identities import combinations, set_size

SEED_BITS = 63
MAX_SAMPLES = 1_000_000  # the plan is held in memory: about 0.7 GB at this size
MAX_CANDIDATES = 64
CELL_CHUNK = 4_096  # a cross product's cells are laid out this many at a time


def cell_key(labels: dict[str, str]) -> str:
    """A label cell's name: its values in attribute order, joined by ``/`` (``happy/female/african``)."""
    return "/".join(labels.values())


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
    identity: str | None = None  # the identity set the row belongs to (see .sets); None: a row of its own
    reference: str | None = None  # the sample id of the set's reference member
    member: int = 0  # the row's place in its set (0: the reference)

    @property
    def cell(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.labels.items()))

    @property
    def seed_key(self) -> str:
        """What the seeds hash: the identity for a set's members (they share their starting noise), else the id."""
        return self.identity or self.sample_id

    def candidate_seeds(self, num_candidates: int, attempt: int = 0) -> list[int]:
        """Seeds for ``num_candidates`` candidates of a given attempt."""
        return [derive_seed(self.master_seed, self.seed_key, c, attempt) for c in range(num_candidates)]

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
        self.set_size = set_size(recipe, recipe.identities) if recipe.identities is not None else 1
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
        if num_samples % self.set_size:
            low = num_samples // self.set_size * self.set_size
            near = " or ".join(str(n) for n in (low, low + self.set_size) if n >= self.set_size)
            raise PlanError(f"--num-samples: {num_samples} is not a whole number of identity sets of {self.set_size} "
                            f"rows ({' x '.join(recipe.identities.vary)}); use {near}")
        self.num_samples = num_samples
        self._samples: list[Sample] | None = None
        self.cross_order: CrossOrder | None = None  # set once the samples are built, for a cross product
        self.split_table: SplitTable | None = None  # likewise, where the splits were searched
        self._shared: dict[tuple, Any] = {}  # equal dicts and strings, stored once

    # Cell order -----------------------------------------------------------------------
    def _cells(self, ids: dict[str, dict[str, int]]) -> Iterator[dict[str, int]]:
        """The label cell of each sample index, in plan order, as value indices: endless for a cross product
        (the free attributes' blocks read ahead of the plan's size), the strata's total otherwise."""
        r = self.recipe
        if r.balance.cross is not None:
            axes = sorted(r.balance.cross, key=lambda a: a != r.primary)
            order = self.cross_order = cross_order(tuple(len(r.attributes[a].values) for a in axes))
            for start in itertools.count(0, CELL_CHUNK):
                for row in order.cells(np.arange(start, start + CELL_CHUNK)).tolist():
                    yield dict(zip(axes, row))
            return
        strata = [s for s in r.strata if s.count > 0]
        counts = [s.count for s in strata]
        cells = [{a: ids[a][v] for a, v in s.labels} for s in strata]
        for i in deficit_order(counts, caps=counts):
            yield cells[i]

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
        if r.identities is not None:
            yield from self._build_sets()
            return
        splits = Splits(r.splits, r.primary)
        names_of_splits = list(r.splits)
        table = self.split_table = recipe_split_table(r)
        names = {name: list(attr.values) for name, attr in r.attributes.items()}
        ids = {name: {v: i for i, v in enumerate(values)} for name, values in names.items()}
        rows = FreeLabels({name: len(values) for name, values in names.items()}, self._cells(ids))
        for index in range(self.num_samples):
            labels = {name: names[name][value] for name, value in rows[index].items()}
            split = names_of_splits[table[index]] if table else splits.take(labels)
            yield self._sample(index, labels, split)

    def _build_sets(self) -> Iterator[Sample]:
        """Identity sets: identities are planned over the fixed attributes as rows are otherwise (cross product or
        strata, free attributes in blocks, prefix-stable), each takes a split of its own, and each expands into
        one row per combination of the varied values, the first being its reference."""
        r, spec = self.recipe, self.recipe.identities
        members = combinations(r, spec)
        fixed = {a: list(attr.values) for a, attr in r.attributes.items() if a not in spec.vary}
        ids = {a: {v: i for i, v in enumerate(values)} for a, values in fixed.items()}
        rows = FreeLabels({a: len(values) for a, values in fixed.items()}, self._set_cells(ids))
        primary = r.primary if r.primary in fixed else next(iter(fixed), "")
        splits = Splits(r.splits, primary)
        for k in range(self.num_samples // len(members)):
            labels = {a: fixed[a][value] for a, value in rows[k].items()}
            split = splits.take(labels if primary else {"": ""})
            identity = f"{r.name}-id{k:07d}"
            for j, varied in enumerate(members):
                row = {a: varied.get(a) or labels[a] for a in r.attributes}
                yield self._sample(k * len(members) + j, row, split, identity, j)

    def _set_cells(self, ids: dict[str, dict[str, int]]) -> Iterator[dict[str, int]]:
        """Each identity's cell over the fixed attributes: the cross product without the varied axes, or the
        strata with counts in sets."""
        r, vary = self.recipe, set(self.recipe.identities.vary)
        if r.balance.cross is not None:
            axes = [a for a in sorted(r.balance.cross, key=lambda a: a != r.primary) if a not in vary]
            if not axes:
                yield from itertools.repeat({})
                return
            order = cross_order(tuple(len(r.attributes[a].values) for a in axes))
            for start in itertools.count(0, CELL_CHUNK):
                for row in order.cells(np.arange(start, start + CELL_CHUNK)).tolist():
                    yield dict(zip(axes, row))
            return
        strata = [s for s in r.strata if s.count > 0]
        counts = [s.count // self.set_size for s in strata]
        cells = [{a: ids[a][v] for a, v in s.labels} for s in strata]
        for i in deficit_order(counts, caps=counts):
            yield cells[i]

    def _sample(self, index: int, labels: dict[str, str], split: str, identity: str | None = None,
                member: int = 0) -> Sample:
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
            seeds=tuple(derive_seed(self.seed, identity or sample_id, c) for c in range(self.num_candidates)),
            master_seed=self.seed,
            identity=identity,
            reference=None if identity is None else f"{r.name}-{index - member:07d}",
            member=member,
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


def recipe_split_table(recipe: Recipe) -> SplitTable | None:
    """The searched split of a small cross product that every attribute belongs to (see ``split_order``), or
    None where the plan takes :class:`~facesynth.balance.Splits`."""
    if recipe.balance.cross is None or set(recipe.balance.cross) != set(recipe.attributes):
        return None
    axes = sorted(recipe.balance.cross, key=lambda a: a != recipe.primary)  # as Plan._cells lays them out
    return split_table(tuple(len(recipe.attributes[a].values) for a in axes), tuple(recipe.splits.values()))
