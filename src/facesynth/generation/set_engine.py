"""Best-of-N per identity set: each of the N candidate identities is rendered as a whole set, and the kept set is
the one whose weakest member scores best among those whose every member passes the gates, the verifiers, the
identity-similarity gate and the leakage check. A set with no passing candidate is made again, whole, at its
next attempt, so every kept set is complete and every quota exact."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..checks.quality import NON_FINITE, QuotaError, Tally
from ..checks.verifiers import failed
from ..errors import PlanError
from ..plan import Sample, cell_key
from .candidates import NonFiniteError, Scored, Winner, exhausted, non_finite
from .sets import check_family, reference_rows

logger = logging.getLogger(__name__)

SIMILARITY = "identity"  # a member too far from its reference (min_similarity)
LEAK = "leak:"  # + the attribute: a fixed attribute's verdict drifted from the reference's


def check_sets(engine: Any, samples: Sequence[Sample]) -> None:
    """One line, before anything is made, when the model's family cannot run the sets or a set's members cannot
    share one call (their prompts encode to different lengths)."""
    if engine.recipe.identities is None:
        return
    check_family(engine.recipe.identities, engine.family)
    for unit in units(samples):
        lengths = [engine.encoder.encode(s.prompt, s.negative_prompt).length for s in unit]
        if len(set(lengths)) > 1:
            raise PlanError(f"identities: the members of {unit[0].identity} are denoised in one call, but their "
                            f"prompts encode to different lengths ({', '.join(map(str, lengths))} tokens); shorten "
                            "the longest phrasing so every member fits the same chunks")


def identity_scores(engine: Any, samples: Sequence[Sample], pixels: np.ndarray, emb: np.ndarray) -> tuple | None:
    """For a call of sets: each entry's cosine to the same candidate of its reference, with the identity
    embedder (``(len(samples), m)``), and the embeddings it compared (None when they are CLIP's own)."""
    if engine.recipe.identities is None:
        return None
    with engine.timings.stage("identity"):
        m = pixels.shape[1]
        flat = engine.embedder.embed(pixels.reshape(-1, *pixels.shape[2:]), emb.reshape(len(samples) * m, -1))
        ident = flat.reshape(len(samples), m, -1)
    similarity = (ident * ident[reference_rows(samples, 1)]).sum(-1)
    return similarity, None if engine.embedder.kind == "clip" else ident


def units(samples: Sequence[Sample]) -> list[list[Sample]]:
    """The samples grouped into what must run together: a set's members (in member order), or one sample."""
    out: list[list[Sample]] = []
    sets: dict[str, list[Sample]] = {}
    for sample in samples:
        if sample.identity is None:
            out.append([sample])
        elif sample.identity in sets:
            sets[sample.identity].append(sample)
        else:
            sets[sample.identity] = [sample]
            out.append(sets[sample.identity])
    for members in sets.values():
        members.sort(key=lambda s: s.member)
    return out


def run_sets(engine: Any, samples: Sequence[Sample], first_attempt: int = 0) -> list[Winner]:
    """The winners of a call's sets, in input order (see the module docstring); ``engine`` is the
    :class:`.engine.Engine` that runs them."""
    groups = units(samples)
    tallies = {s.sample_id: Tally() for s in samples}
    best: dict[str, list[Winner]] = {}
    todo, attempt = groups, first_attempt
    opts = engine.options
    while todo:
        scored = engine.candidates([s for g in todo for s in g], attempt)
        if not any(s.finite.any() for s in scored):
            raise NonFiniteError(non_finite(scored, engine.pipe))
        by_id = {s.sample.sample_id: s for s in scored}
        retry = []
        for group in todo:
            members = [by_id[s.sample_id] for s in group]
            key = group[0].identity or group[0].sample_id
            win = choose_set(engine, members, tallies)
            kept = best.get(key)
            if win is not None and (kept is None or _confidence(win) > _confidence(kept)):
                best[key] = kept = win
            reference = tallies[group[0].sample_id]
            if kept is None:
                reference.refills += 1
                if reference.refills > engine.quality.max_refills:
                    whole = Tally(sum(tallies[s.sample_id].checked for s in group),
                                  sum((tallies[s.sample_id].rejected for s in group), Counter()), reference.refills)
                    raise QuotaError(exhausted(group[0], whole).replace("sample '", "identity set of '", 1))
                retry.append(group)
            elif (opts.min_label_confidence is not None and _confidence(kept) < opts.min_label_confidence
                  and attempt + 1 - first_attempt < opts.max_attempts):
                retry.append(group)
        todo, attempt = retry, attempt + 1
    winners = {w.sample.sample_id: w for ws in best.values() for w in ws}
    out = [winners[s.sample_id] for s in samples]
    for win in out:
        win.tally = tallies[win.sample.sample_id]
        engine.gates.accept(cell_key(win.sample.labels), win.embedding)
    return out


def _confidence(winners: list[Winner]) -> float:
    return min(w.label_confidence for w in winners)


def choose_set(engine: Any, members: list[Scored], tallies: dict[str, Tally]) -> list[Winner] | None:
    """The members' winners of the best candidate set that passes every check, or None (each rejection counted
    on the member that failed it)."""
    spec = engine.recipe.identities
    gating = bool(engine.verifiers) and engine.options.verify_mode == "gate"
    fixed = [v for v in engine.verifiers if spec is None or v.attribute not in spec.vary]
    entries = len(members[0].indices)
    finite = np.all([m.finite for m in members], axis=0)
    score = np.min([m.scores for m in members], axis=0)
    broken = [k for k in range(entries) if not finite[k]]
    for m in members:
        bad = sum(1 for k in broken if not m.finite[k])
        tallies[m.sample.sample_id].checked += bad
        if bad:
            tallies[m.sample.sample_id].rejected[NON_FINITE] += bad
    order = sorted((k for k in range(entries) if finite[k]), key=lambda k: (-score[k], k))
    for k in order:
        picked, reason, where = [], None, None
        verdicts = {}
        for m in members:
            tally = tallies[m.sample.sample_id]
            tally.checked += 1
            cell = cell_key(m.sample.labels)
            pending = [w.embedding for w in picked if cell_key(w.sample.labels) == cell]
            unsafe = None if m.unsafe is None else m.unsafe[k]
            reason, box = engine.gates.check(m.pixels[k], m.embeddings[k], unsafe, cell, pending)
            if reason is None:
                result = engine.verified(m, k, box)
                verdicts[m.sample.sample_id] = result
                attr = failed(engine.verifiers, result, m.sample.labels) if gating else None
                if attr is not None:
                    reason = f"verify:{attr}"
                elif spec is not None and spec.min_similarity is not None and m.similarity is not None \
                        and m.similarity[k] < spec.min_similarity:
                    reason = SIMILARITY
            if reason is not None:
                where = tally
                break
            picked.append(engine.pick(m, k, box, verdicts[m.sample.sample_id]))
        if reason is None:
            leaks = _leaks(fixed, members, verdicts)
            for win in picked:
                win.leaks = leaks.get(win.sample.sample_id, [])
            drifted = next((a for w in picked for a in w.leaks), None)
            if drifted is None or engine.options.verify_mode != "gate":
                return picked
            reason, where = f"{LEAK}{drifted}", tallies[next(w.sample.sample_id for w in picked if w.leaks)]
        where.rejected[reason] += 1
    return None


def _leaks(fixed, members: list[Scored], verdicts: dict[str, dict]) -> dict[str, list[str]]:
    """Per member, the fixed attributes whose verifier verdict differs from the reference's (the attributes that
    must not drift while the varied ones change)."""
    if not fixed:
        return {}
    reference = verdicts[members[0].sample.sample_id]
    return {m.sample.sample_id: [v.attribute for v in fixed
                                 if verdicts[m.sample.sample_id][v.attribute][0] != reference[v.attribute][0]]
            for m in members}
