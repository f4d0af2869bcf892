"""``evaluation.json`` as the card and the command read it: where it lives, whether it is intact and current,
the card's Evaluation section and the summary ``facesynth evaluate`` prints. :mod:`facesynth.evaluate`
measures and writes it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..folder.reading import content_fingerprint
from ..errors import OutputError
from ..recipe import Recipe
from ..folder.files import load_json
from ..folder.writer import Manifest, sha256_file

logger = logging.getLogger(__name__)

EVALUATION = "evaluation.json"
ASSETS = "assets/evaluation"
FORMAT = 1


def is_evaluation_file(name: str) -> bool:
    return name == EVALUATION or name.startswith(ASSETS + "/")


def load_evaluation(root: Path) -> dict[str, Any] | None:
    """``evaluation.json`` when the folder has one (None without)."""
    path = Path(root) / EVALUATION
    if not path.is_file():
        return None
    try:
        data = load_json(path)
    except ValueError as exc:
        raise OutputError(f"'{path}': not readable JSON ({exc}); run `facesynth evaluate {root}`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OutputError(f"'{path}': not an evaluation this facesynth version reads; run `facesynth evaluate {root}`")
    listed = (Manifest.load(Path(root)) or Manifest({})).get("files") or {}
    if EVALUATION in listed and listed[EVALUATION] != sha256_file(path):
        raise OutputError(f"'{path}': changed since facesynth evaluate wrote it; run `facesynth evaluate {root}`")
    shapes = {"data": dict, "settings": dict, "embedding": dict, "diversity": dict, "separability": dict}
    wrong = [k for k, kind in shapes.items() if not isinstance(data.get(k), kind)]
    if wrong or not all(isinstance(data["diversity"].get(k), dict) for k in ("cells", "attributes")):
        raise OutputError(f"'{path}': not a complete evaluation ({', '.join(wrong) or 'diversity'} is not what "
                          f"facesynth writes); run `facesynth evaluate {root}`")
    return data


def stale(root: Path, manifest: Manifest) -> str | None:
    """Why ``evaluation.json`` does not describe the data as it is now (None when it does, or there is none)."""
    data = load_evaluation(root)
    if data is None:
        return None
    made = data.get("data") or {}
    if made.get("fingerprint") != content_fingerprint(manifest):
        return (f"older than the data (it measured {made.get('rows')} rows of version {made.get('version')}); "
                f"run `facesynth evaluate {root}`")
    return None


def for_card(root: Path, manifest: Manifest, recipe: Recipe, lowest: int = 10) -> dict[str, Any] | None:
    """What the card's Evaluation section shows: the result, whether it is stale, its pictures, and the label
    cells with the lowest Vendi score for their size (all cells are in ``evaluation.json``)."""
    try:
        data = load_evaluation(root)
    except OutputError as exc:
        logger.warning("%s; the card has no Evaluation section", exc)
        return None
    if data is None:
        return None
    cells = data["diversity"]["cells"]
    scored = [(c, d) for c, d in cells.items() if d["vendi"] is not None]
    ranked = sorted(scored, key=lambda cd: (cd[1]["vendi"] / cd[1]["rows"], cd[0]))[:lowest]
    vendi = sorted(d["vendi"] for _, d in scored)
    listed = manifest.get("files") or {}
    order = {a: list(attr.values) for a, attr in recipe.attributes.items()}  # the recipe's order, not JSON's
    data["diversity"]["attributes"] = {a: {v: by[v] for v in order[a] if v in by}
                                       for a in order if (by := data["diversity"]["attributes"].get(a))}
    data["separability"] = {a: data["separability"][a] for a in order if a in data["separability"]}
    real = data.get("real") or {}
    for key in ("counts", "per_value"):
        where = real.get("distance", {}) if key == "per_value" else real
        if key in where:
            where[key] = {v: where[key][v] for a in order for v in order[a] if v in where[key]}
    for result in [*data["separability"].values(), *(real.get(k) for k in ("tstr", "trts"))]:
        if result and "recall" in result:
            result["recall"] = {v: result["recall"][v] for a in order for v in order[a] if v in result["recall"]}
    return {
        **data,
        "stale": (data.get("data") or {}).get("fingerprint") != content_fingerprint(manifest),
        "pictures": {Path(name).stem: name for name in sorted(listed) if name.startswith(ASSETS + "/")},
        "lowest_cells": ranked,
        "cell_vendi": {"min": vendi[0], "median": vendi[len(vendi) // 2], "max": vendi[-1]} if vendi else None,
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The short summary ``facesynth evaluate`` prints."""
    emb, div = result["embedding"], result["diversity"]
    lines = [f"{result['data']['rows']} rows, CLIP {emb['clip_model']} ({emb['dim']}-d embeddings), "
             f"{result['seconds']:.1f} s"]
    cells = [d for d in div["cells"].values() if d["vendi"] is not None]
    if cells:
        closest = max((d for d in cells if d["closest"]), key=lambda d: d["closest"]["similarity"], default=None)
        vendi = sorted(d["vendi"] for d in cells)
        line = (f"diversity: Vendi score per label cell {vendi[0]:.2f} to {vendi[-1]:.2f} (median "
                f"{vendi[len(vendi) // 2]:.2f}) over {len(cells)} cells")
        if closest:
            line += f"; closest pair {closest['closest']['similarity']:.3f} ({', '.join(closest['closest']['ids'])})"
        lines.append(line)
    elif div["cells"]:
        lines.append("diversity: every label cell holds one row, so diversity within a cell is not measured (it "
                     "needs two rows or more)")
    lines.append("separability (logistic regression on CLIP embeddings, out-of-fold):")
    for a, s in result["separability"].items():
        lines.append(f"  {a:12s} " + (s["skipped"] if "skipped" in s else
                                       f"{s['accuracy']:.3f} (chance {s['chance']:.3f}, {s['folds']} folds)"))
    real = result.get("real")
    if real:
        def acc(r):
            return r["skipped"] if "skipped" in r else f"{r['accuracy']:.3f} (chance {r['chance']:.3f})"
        left = [f"{n} {what}" for n, what in ((real.get("rows_unlabelled"), "without a label"),
                                               (real.get("images_skipped"), "unreadable images")) if n]
        lines.append(f"real: {real['name']} split {real['split']}, {real['rows_used']} rows as {real['attribute']}"
                     + (f" ({', '.join(left)} left out)" if left else ""))
        lines.append(f"  train on synthetic, test on real: {acc(real['tstr'])}")
        if real["tstr"].get("note"):
            lines.append(f"  note: {real['tstr']['note']}")
        lines.append(f"  train on real, test on synthetic: {acc(real['trts'])}")
        d = real["distance"]["all"]
        if d["fid"] is not None:
            lines.append(f"  CLIP-space FID {d['fid']:.4f}, KID {d['kid']:.5f}")
    return lines
