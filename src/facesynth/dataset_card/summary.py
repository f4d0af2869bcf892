"""What the dataset card says about the data, counted from the shards: label counts per split, how far each
attribute value is from its share of a split, and score statistics (label columns only, one row group at a
time, never typed by hand)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from ..folder.reading import read_manifest, shard_paths
from ..errors import OutputError
from ..plan import recipe_split_table
from ..recipe import Recipe, recipe_of
from ..folder.writer import Manifest, arrow_bytes

SEARCHED_SPLITS = 8  # the manifest format from which a small cross product's splits are searched


class RunningStats:
    """Count, mean, population std, min and max in one pass (Welford), without keeping the values."""

    def __init__(self):
        self.n, self.mean, self._m2 = 0, 0.0, 0.0
        self.min, self.max = math.inf, -math.inf

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (x - self.mean)
        self.min, self.max = min(self.min, x), max(self.max, x)

    def as_dict(self) -> dict[str, float]:
        if not self.n:
            return {"n": 0, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
        return {"n": self.n, "mean": self.mean, "std": math.sqrt(self._m2 / self.n), "min": self.min,
                "max": self.max}


@dataclass
class Summary:
    """What the card says about the data, all counted from the shards."""

    recipe: Recipe
    manifest: Manifest
    split_sizes: Counter = field(default_factory=Counter)
    split_bytes: Counter = field(default_factory=Counter)  # Parquet bytes per split
    label_bytes: Counter = field(default_factory=Counter)  # Parquet bytes of each primary label's files
    arrow_bytes: Counter = field(default_factory=Counter)  # (label, split) -> the rows' Arrow size, measured
    # attribute -> value -> Counter over (split or gender value)
    counts: dict[str, dict[str, Counter]] = field(default_factory=dict)
    primary_split: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    clip: dict[str, RunningStats] = field(default_factory=lambda: defaultdict(RunningStats))
    confidence: dict[str, RunningStats] = field(default_factory=lambda: defaultdict(RunningStats))
    in_split: Counter = field(default_factory=Counter)  # (split, attribute, value) -> rows
    with_primary: Counter = field(default_factory=Counter)  # (split, primary label, attribute, value) -> rows

    @property
    def total(self) -> int:
        return sum(self.split_sizes.values())


def summarize(root: str | Path) -> Summary:
    """Count labels per split and gather scores, streaming the label columns of every shard."""
    root = Path(root)
    manifest = read_manifest(root, current=True)
    if not manifest.shards:
        raise OutputError(f"'{root}': no finished shards yet, so nothing to describe; run generate first")
    recipe = recipe_of(manifest)
    summary = Summary(recipe, manifest)
    names = {a: list(attr.values) for a, attr in recipe.attributes.items()}
    summary.counts = {a: {v: Counter() for v in values} for a, values in names.items()}
    by = "gender" if "gender" in names else None
    cols = [*names, "clip_score", "label_confidence"]
    for name, path in shard_paths(root, manifest).items():
        rec = manifest.shards[name]
        split = rec["split"]
        summary.split_bytes[split] += rec["bytes"]
        summary.label_bytes[name.split("/")[1]] += rec["bytes"]
        pf = pq.ParquetFile(path)
        summary.arrow_bytes[name.split("/")[1], split] += rec.get("arrow_bytes") or arrow_bytes(path)  # older records
        for i in range(pf.num_row_groups):
            table = pf.read_row_group(i, columns=cols).to_pydict()
            labels = {a: [names[a][x] for x in table[a]] for a in names}
            for r in range(len(table["clip_score"])):
                summary.split_sizes[split] += 1
                primary = labels[recipe.primary][r]
                summary.primary_split[primary][split] += 1
                summary.clip[primary].add(table["clip_score"][r])
                summary.confidence[primary].add(table["label_confidence"][r])
                for a in names:
                    value = labels[a][r]
                    c = summary.counts[a][value]
                    c["_total"] += 1
                    if by and a != by:
                        c[labels[by][r]] += 1
                    summary.in_split[split, a, value] += 1
                    if a != recipe.primary:
                        summary.with_primary[split, primary, a, value] += 1
    return summary


def split_balance(summary: Summary) -> dict[str, float]:
    """How far from its share of each split an attribute value gets (``attribute``), and a primary label with
    an attribute value (``pair``): the largest ``|rows in split - rows overall x split share|``, in rows."""
    worst = {"attribute": 0.0, "pair": 0.0}
    for kind, counts in (("attribute", summary.in_split), ("pair", summary.with_primary)):
        overall = Counter()
        for (split, *group), n in counts.items():
            overall[tuple(group)] += n
        for group, n in overall.items():
            for split, size in summary.split_sizes.items():
                share = n * size / summary.total
                worst[kind] = max(worst[kind], abs(counts.get((split, *group), 0) - share))
    return worst


def split_search(recipe: Recipe, manifest: Manifest) -> dict[str, int] | None:
    """The bounds the plan's searched split keeps for this recipe's shape (``facesynth.split_order``), or None
    where the folder's splits came from the deficit rule (any other shape, or a folder older than format 8)."""
    table = recipe_split_table(recipe) if manifest.get("format", 0) >= SEARCHED_SPLITS else None
    if table is None:
        return None
    return {"value": table.bounds[0], "pair": table.bounds[1], "rounds": table.rounds}
