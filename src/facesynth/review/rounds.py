"""A review round's bookkeeping in the manifest: which rows it replaces, at which attempt, and what it reports.

No torch. The rules:

- **A round takes a snapshot when it starts**: the verdict file's size then (``reviewing.verdicts``). Every
  decision of the round, and of a run resumed after a crash, reads only those bytes, so verdicts posted while
  ``generate`` runs wait for the next round, and an interrupted round finishes exactly as an uninterrupted one.
- **What is replaced is recorded, not recomputed**: each rejected row the round found (its sample, attempt,
  image digest and reason) goes into ``reviewing.rejected`` before any shard is rewritten. The CLI line,
  ``previous.replaced``, the manifest's ``review`` counts and the card all count that record.
- **Every row keeps its current attempt**: a rejected sample's next attempt becomes its floor
  (``attempts[sample_id]``), kept across grows, repairs and resumes, so a shard built again for any reason
  makes the sample from that attempt on and never brings a rejected row back.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..folder.state import FIRST_VERSION, version_bump
from .verdicts import Verdict, VerdictError, current_rows, reason_counts, review_state, snapshot_size
from ..folder.writer import Manifest

logger = logging.getLogger(__name__)

SET_REASON = "made again with its identity set"  # a member whose set another member's rejection remade

def floors(manifest: Manifest) -> dict[str, int]:
    """sample_id -> the first attempt it may be made at (only samples a review round moved on)."""
    return dict(manifest.get("attempts") or {})


def snapshot(out: Path, manifest: Manifest) -> int:
    """The verdict bytes this run reads: the open round's snapshot, else the file as it is now."""
    round_ = manifest.get("reviewing") or {}
    if isinstance(round_.get("verdicts"), int):
        return round_["verdicts"]
    return snapshot_size(out)


def find_rejected(out: Path, manifest: Manifest, cells: dict[str, str], names: list[str],
                  limit: int) -> dict[str, dict[str, Verdict]]:
    """Rejections in the snapshot whose rows these shards hold now (same attempt, same image): shard ->
    sample_id -> verdict."""
    waiting, rows = review_state(out, names, cells, limit)
    sets = getattr(cells, "sets", None) or {}  # identity sets: a rejected member's set is made again whole
    extra = [m for sid in waiting for m in sets.get(sid, ()) if m not in waiting]
    if extra:
        members = current_rows(out, names, extra)
        for member in extra:
            if member in members:
                row = members[member]
                waiting[member] = Verdict(member, row.attempt, row.image, "reject", SET_REASON)
                rows[member] = row
    found: dict[str, dict[str, Verdict]] = {}
    for sid, verdict in waiting.items():
        found.setdefault(rows[sid].shard, {})[sid] = verdict
    return found


def start(manifest: Manifest, found: dict[str, dict[str, Verdict]], cells: dict[str, str], limit: int,
          version: str | None) -> None:
    """Open the round (or add to the open one): fix its version and snapshot, record what it replaces, and
    move each rejected sample's floor past the rejected attempt. The caller saves the manifest before any
    shard is rewritten."""
    if manifest.get("reviewing") is None or "rejected" not in manifest["reviewing"]:
        current = manifest.get("version", FIRST_VERSION)
        n = manifest["plan"]["num_samples"]
        previous = manifest.get("previous") or {}
        growing = not manifest.get("complete") and previous.get("num_samples", n) < n  # already a new version
        manifest.data["reviewing"] = {"from": previous["version"] if growing else current,
                                      "version": version or (current if growing else version_bump(current)),
                                      "verdicts": limit, "rejected": {}}
    round_ = manifest["reviewing"]
    attempts = manifest.data.setdefault("attempts", {})
    for shard, rejected in found.items():
        for sid, v in rejected.items():
            round_["rejected"][sid] = {"attempt": v.attempt, "image": v.image, "reason": v.reason,
                                       "cell": cells[sid], "shard": shard}
            attempts[sid] = max(attempts.get(sid, 0), v.attempt + 1)
    manifest.data["version"] = round_["version"]
    manifest.data["complete"] = False
    logger.info("%d row(s) rejected in review, in %d shard(s), are made again (version %s)",
                sum(map(len, found.values())), len(found), manifest["version"])


def finish(out: Path, manifest: Manifest, cells: dict[str, str] | None) -> int:
    """Close the open round: add what it replaced to the manifest's ``review`` history and ``previous``, and
    count the rejections still waiting (posted after the snapshot). Returns the rows the round replaced."""
    if cells is None:
        return 0
    round_ = manifest.data.pop("reviewing", None)
    replaced = list((round_ or {}).get("rejected", {}).values())
    review = dict(manifest.get("review") or {"rejected": 0, "cells": {}, "reasons": {}})
    if replaced:
        by_cell = Counter(review.get("cells") or {}) + Counter(r["cell"] for r in replaced)
        reasons = Counter(review.get("reasons") or {})
        reasons.update(reason_counts(Verdict("", 0, "", "reject", r["reason"]) for r in replaced))
        review.update(rejected=review.get("rejected", 0) + len(replaced), cells=dict(sorted(by_cell.items())),
                      reasons=dict(reasons.most_common()))
    try:  # verdicts posted since the snapshot: counted, not acted on
        waiting = find_rejected(out, manifest, cells, list(manifest.shards), snapshot_size(out))
        review["pending"] = sum(map(len, waiting.values()))
    except VerdictError as exc:  # damaged since the round started: the run's work stands, validate reports it
        logger.warning("%s", exc)
    if review.get("rejected") or review["pending"]:
        manifest.data["review"] = review
    if round_ is None:
        return 0
    previous = manifest.get("previous") or {}
    n = manifest["plan"]["num_samples"]
    if previous.get("version") != round_["from"] or previous.get("num_samples", n) >= n:  # not grown this round
        previous = {"version": round_["from"], "num_samples": n, "cells": manifest["cells"]}
    manifest.data["previous"] = {**previous, "replaced": len(replaced)}
    return len(replaced)


def refuse_for_workers(found: dict[str, dict[str, Any]]) -> None:
    n = sum(map(len, found.values()))
    raise OutputError(f"--num-workers: {n} row(s) rejected in review are made again by a single process; run the "
                      "same command without --worker-index/--num-workers")
