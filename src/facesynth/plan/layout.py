"""The layout: which planned samples each shard holds, in write order. Pure: no torch, no files.

Shards are cut from the plan alone, so every process (a resumed run, a worker,
``validate``) computes the same layout and knows which rows belong where.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .samples import Plan, Sample


def shard_name(label: str, split: str, index: int) -> str:
    """``data/{label}/{split}-{index}.parquet``: one folder per primary label, so each per-label config (and
    the Hub viewer's subset) is exactly its own files; no total in the name, so growing keeps the shards."""
    return f"data/{label}/{split}-{index:05d}.parquet"


def ids_digest(sample_ids: list[str]) -> str:
    """A hash of a shard's sample ids in write order: equal digests mean equal content."""
    return hashlib.sha256("\n".join(sample_ids).encode()).hexdigest()[:16]



@dataclass
class ShardTask:
    """One shard of the layout and the samples it holds, in write order."""

    name: str
    split: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def ids(self) -> str:
        return ids_digest([s.sample_id for s in self.samples])


def layout(plan: Plan, per_shard: int) -> list[ShardTask]:
    """Shards per primary label and split: that label's rows of the split in plan order, cut into
    ``per_shard`` rows, each shard sorted by settings (so equal settings batch together).

    Prefix-stable like the plan: a larger plan keeps every full shard of a smaller one.
    """
    recipe = plan.recipe
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in plan.samples:
        groups.setdefault((s.labels[recipe.primary], s.split), []).append(s)
    tasks = []
    for label in recipe.attributes[recipe.primary].values:
        for split in recipe.splits:
            samples = groups.get((label, split), [])
            for i in range(-(-len(samples) // per_shard)):
                chunk = samples[i * per_shard: (i + 1) * per_shard]
                chunk.sort(key=lambda s: (sorted(s.settings.items()), s.index))
                tasks.append(ShardTask(shard_name(label, split, i), split, chunk))
    return tasks


def batch_groups(tasks: list[ShardTask], per_shard: int, limit: int) -> list[list[ShardTask]]:
    """Consecutive shards whose samples may share pipeline calls, in layout order.

    A full shard (``per_shard`` rows) is a group of its own, so the shards a grown dataset keeps were made
    in the same calls as a fresh run would make them. Shards with fewer rows (the last of a primary label and
    split, and every shard of a small dataset) join their neighbours while the group holds at most ``limit``
    rows: that is what a process holds in memory before it writes them. Workers share groups, not shards.
    """
    groups: list[list[ShardTask]] = []
    rows = 0
    for task in tasks:
        small = len(task.samples) < per_shard
        if small and groups and rows + len(task.samples) <= limit and len(groups[-1][-1].samples) < per_shard:
            groups[-1].append(task)
            rows += len(task.samples)
        else:
            groups.append([task])
            rows = len(task.samples)
    return groups


def call_contexts(groups: list[list[ShardTask]]) -> dict[str, str]:
    """Each shard's group, as the digest of the group's sample ids (a shard alone: its own ids' digest).

    The manifest records it with the shard, so a shard whose rows were made in another group's calls (a
    grown dataset's small shard keeps its samples while its neighbours change) is made again.
    """
    out = {}
    for group in groups:
        digest = ids_digest([s.sample_id for t in group for s in t.samples])
        out.update((t.name, digest) for t in group)
    return out


def set_groups(tasks: list[ShardTask], plan: Plan) -> list[list[ShardTask]] | None:
    """For identity sets whose varied attributes include the primary label: the shards that hold the same
    identities (one per label, same split and index), which must be made together since a set is denoised in
    one call; None for any other plan (:func:`batch_groups` then)."""
    spec = plan.recipe.identities
    if spec is None or plan.recipe.primary not in spec.vary:
        return None
    groups: dict[tuple[str, str], list[ShardTask]] = {}
    for task in tasks:
        groups.setdefault((task.split, task.name.rpartition("-")[2]), []).append(task)
    return list(groups.values())


def set_rows_per_label(plan: Plan) -> int:
    """How many rows of one identity share a primary label: a shard holds whole multiples of this."""
    spec = plan.recipe.identities
    if spec is None:
        return 1
    values = len(plan.recipe.attributes[plan.recipe.primary].values)
    return plan.set_size // values if plan.recipe.primary in spec.vary else plan.set_size
