"""How a run's plan is cut for work: rows per shard, the groups of shards that share pipeline calls (and that
workers share), and a word when there are fewer groups than workers."""

from __future__ import annotations

import logging

from ..errors import PlanError
from ..plan import Plan
from ..plan.layout import ShardTask, batch_groups, layout, set_groups, set_rows_per_label
from ..recipe import Recipe
from .config import GenerateConfig

logger = logging.getLogger(__name__)

GROUP_CALLS = 32  # small shards share calls in groups of at most this many full calls' samples (layout.batch_groups)


def shard_groups(cfg: GenerateConfig, plan: Plan, per_shard: int, worker) -> tuple[list[ShardTask],
                                                                                  list[list[ShardTask]]]:
    """The layout's shards and the groups they are made in (a set's shards together, else small ones pooled)."""
    tasks = layout(plan, per_shard)
    limit = min(per_shard, GROUP_CALLS * max(1, cfg.batch_size // cfg.candidates))
    groups = set_groups(tasks, plan) or batch_groups(tasks, per_shard, limit)
    if len(groups) < worker.count:
        say_idle(plan.recipe, plan, per_shard, limit, len(groups), worker)
    return tasks, groups


def shard_rows(cfg: GenerateConfig, plan: Plan, fits: int) -> int:
    """Rows per shard: ``--rows-per-shard``, else what fits 500 MB; for identity sets a whole number of a set's
    rows per label, and fewer per shard where a group holds one shard per label (its rows are held in memory)."""
    whole = set_rows_per_label(plan)
    if cfg.rows_per_shard is not None:
        if cfg.rows_per_shard % whole:
            raise PlanError(f"--rows-per-shard: {cfg.rows_per_shard} is not a whole number of the {whole} rows an "
                            "identity set has per label; use a multiple of it")
        return cfg.rows_per_shard
    if plan.recipe.identities is not None and whole < plan.set_size:
        fits = max(1, fits * whole // plan.set_size)
    return max(whole, fits // whole * whole)


def say_idle(recipe: Recipe, plan: Plan, per_shard: int, limit: int, groups: int, worker) -> None:
    """At the start, before any model loads: the plan's groups of shards are fewer than the workers, so some
    have nothing to make; name this worker's share and the size at which every worker gets work."""
    unit = plan.set_size  # identity sets: sizes in whole sets
    size, most = plan.num_samples, (plan.capacity or 10**7) // unit * unit
    while size < most:  # sizes double, then halve back: plans are prefix-stable, so more rows never mean fewer groups
        size = min(most, size * 2)
        if _groups(Plan(recipe, size, plan.seed, plan.num_candidates), per_shard, limit) >= worker.count:
            break
    low = plan.num_samples
    while low + unit < size:
        mid = (low + size) // 2 // unit * unit
        enough = _groups(Plan(recipe, mid, plan.seed, plan.num_candidates), per_shard, limit) >= worker.count
        low, size = (low, mid) if enough else (mid, size)
    idle = f"worker {groups}" if groups == worker.count - 1 else f"workers {groups} to {worker.count - 1}"
    mine = " (this one among them)" if worker.index >= groups else ""
    logger.warning("worker %d of %d: %d rows make %d group(s) of shards for %d workers, so %s will have nothing to "
                   "make%s; every worker gets work from %d rows (--num-samples %d)", worker.index, worker.count,
                   plan.num_samples, groups, worker.count, idle, mine, size, size)


def _groups(plan: Plan, per_shard: int, limit: int) -> int:
    tasks = layout(plan, per_shard)
    return len(set_groups(tasks, plan) or batch_groups(tasks, per_shard, limit))
