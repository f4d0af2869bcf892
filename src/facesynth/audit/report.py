"""The audit's report folder: ``audit.json`` (every figure), ``audit.md`` (tables and pictures that read well on
GitHub and the Hub) and the pictures: each grouping's accuracy with its interval as bars, and the confusion
matrix. Written atomically; the same figures give the same bytes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..dataset_card.confusion import confusion_png, font
from ..dataset_card.escape import code, md
from ..errors import visible
from ..folder.files import atomic_write, dumps_json

MEANING = ("These faces are synthetic, not photographs of people: a gap measured here is a reason to look at the "
           "classifier on real data, not a verdict about it.")


def write(out: Path, result: dict[str, Any]) -> list[str]:
    """Write the report; the names of the files written, relative to ``out``."""
    names = ["audit.json", "audit.md", "confusion.png"]
    pictures = {"confusion.png": confusion_png(result["overall"]["confusion"], result["values"],
                                               f"{result['attribute']}: true x predicted ({result['classifier']['model']})",
                                               column_values=[*result["values"], "other"])}
    for grouping, figures in result["groups"].items():
        if len(figures["by"]) == 1:
            name = f"accuracy-{grouping}.png"
            pictures[name] = bars(figures, f"{result['attribute']} accuracy by {grouping} (95% interval)")
            names.append(name)
    for name, data in pictures.items():
        with atomic_write(out / name, "wb") as f:
            f.write(data)
    with atomic_write(out / "audit.json") as f:
        f.write(dumps_json(result))
    with atomic_write(out / "audit.md") as f:
        f.write(markdown(result))
    return names


def bars(figures: dict[str, Any], title: str) -> bytes:
    """Accuracy per group as horizontal bars with their bootstrap interval; a small group in grey."""
    groups = figures["groups"]
    width, row, left = 560, 28, 190
    picture = Image.new("RGB", (width, 50 + row * len(groups) + 20), "white")
    draw = ImageDraw.Draw(picture)
    text, small = font(14), font(12)
    draw.text((10, 10), title, fill="black", font=text)
    span = width - left - 30
    for i, (name, g) in enumerate(sorted(groups.items())):
        y = 45 + i * row
        label = name if len(name) <= 24 else name[:23] + "…"
        draw.text((10, y + 4), f"{label} ({g['rows']})", fill="dimgray" if g["small"] else "black", font=small)
        if g.get("accuracy") is not None:
            draw.rectangle([left, y + 4, left + int(span * g["accuracy"]), y + row - 8],
                           fill="lightgray" if g["small"] else "steelblue")
        lo, hi = g["accuracy_ci"]
        if lo is not None and hi is not None:
            draw.line([left + int(span * lo), y + row // 2 - 2, left + int(span * hi), y + row // 2 - 2], fill="black",
                      width=2)
    for tick in (0, 0.5, 1):
        x = left + int(span * tick)
        draw.line([x, 40, x, 45 + row * len(groups)], fill="silver")
        draw.text((x - 8, 45 + row * len(groups) + 2), f"{tick:g}", fill="dimgray", font=small)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _ci(pair: list[float | None]) -> str:
    lo, hi = pair
    return "–" if lo is None or hi is None else f"{100 * lo:.1f}–{100 * hi:.1f}%"


def markdown(result: dict[str, Any]) -> str:
    c, o, values = result["classifier"], result["overall"], result["values"]
    pin = f"commit {code(c['commit'][:12])}" if c.get("commit") else f"sha256 {code((c.get('sha256') or '')[:12])}"
    lines = [f"# Audit of {code(c['model'])} on {md(result['attribute'])}", "", f"*{MEANING}*", "",
             f"Classifier: {code(c['model'])} ({md(c['kind'])}, {pin}). Data: {result['data']['rows']} rows of split "
             f"{code(result['split'])} (data {code(result['data']['fingerprint'])}). Intervals: 95%, "
             f"{result['settings']['rounds']} bootstrap resamples, seed {result['settings']['seed']}; groups of fewer "
             f"than {result['settings']['min_group']} rows are marked small and not ranked.", "",
             "## Overall", "", f"Accuracy {_pct(o['accuracy'])} ({_ci(o['accuracy_ci'])}), {o['rows']} rows.", "",
             "| " + " | ".join(f"recall {md(v)}" for v in values) + " |", "|" + "---:|" * len(values),
             "| " + " | ".join(_pct(o["recall"][v]) for v in values) + " |", "", "![Confusion matrix](confusion.png)",
             ""]
    for grouping, g in result["groups"].items():
        lines += [f"## By {md(grouping)}", "", "| group | rows | accuracy | 95% interval |"
                  + "".join(f" recall {md(v)} |" for v in values), "|---|---:|---:|---|" + "---:|" * len(values)]
        for name, row in sorted(g["groups"].items()):
            recall = row.get("recall") or {}
            lines.append(f"| {md(name)}{' (small)' if row['small'] else ''} | {row['rows']} | {_pct(row['accuracy'])} "
                         f"| {_ci(row['accuracy_ci'])} |" + "".join(f" {_pct(recall.get(v))} |" for v in values))
        gap = (f"Largest difference in accuracy {_pct(g['difference'])} ({_ci(g['difference_ci'])}), ratio "
               f"{_num(g['ratio'])}; lowest first: {', '.join(md(k) for k in g['ranked'])}." if g["difference"] is not None
               else "Fewer than two groups large enough to compare.")
        lines += ["", gap]
        if "equalized_odds_difference" in g:
            lines += ["", f"Equalized-odds difference {_num(g['equalized_odds_difference'])}, demographic-parity "
                          f"difference {_num(g['demographic_parity_difference'])} (fairlearn; {md(g['positive'])} is positive)."]
        if len(g["by"]) == 1:
            lines += ["", f"![{md(grouping)}](accuracy-{grouping}.png)"]
        lines.append("")
    lines += counterfactual_lines(result.get("counterfactual"))
    return "\n".join(lines).rstrip() + "\n"


def counterfactual_lines(cf: dict[str, Any] | None) -> list[str]:
    if not cf:
        return []
    lines = ["## Counterfactual pairs", "", "Two members of one identity set that share the true value and differ in "
             "one varied attribute alone should get the same prediction.", "",
             "| varied | pairs | flip rate | 95% interval | mean change of p(true) | 95% interval |",
             "|---|---:|---:|---|---:|---|"]
    for attr, e in cf["attributes"].items():
        lines.append(f"| {md(attr)} | {e['pairs']} | {_pct(e['flip_rate'])} | {_ci(e['flip_ci'])} | "
                     f"{_num(e['mean_change'])} | {_num(e['change_ci'][0])}–{_num(e['change_ci'][1])} |")
    for attr, e in cf["attributes"].items():
        for fixed, groups in e["by_group"].items():
            lines += ["", f"Flip rate of {md(attr)} pairs by {md(fixed)}: " + ", ".join(
                f"{md(v)} {_pct(g['flip_rate'])} ({_ci(g['flip_ci'])}, {g['pairs']} pairs{', small' if g['small'] else ''})"
                for v, g in groups.items()) + "."]
    if "per_identity" in cf:
        p = cf["per_identity"]
        lines += ["", f"Identities with every member predicted right: {p['all_right']} of {p['identities']} "
                      f"({_pct(p['rate'])}, {_ci(p['ci'])})."]
    return lines + [""]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What the command prints: overall accuracy, the widest gap of each grouping of one attribute, flip rates."""
    o = result["overall"]
    lines = [f"{result['attribute']} accuracy {_pct(o['accuracy'])} ({_ci(o['accuracy_ci'])}) on {o['rows']} rows "
             f"of {result['split']}"]
    for grouping, g in result["groups"].items():
        if len(g["by"]) == 1 and g["difference"] is not None:
            lines.append(f"  by {grouping}: largest difference {_pct(g['difference'])} ({_ci(g['difference_ci'])}), "
                         f"lowest {g['ranked'][0]}")
    for attr, e in ((result.get("counterfactual") or {}).get("attributes") or {}).items():
        lines.append(f"  flip rate when only {attr} changes: {_pct(e['flip_rate'])} ({_ci(e['flip_ci'])}, "
                     f"{e['pairs']} pairs)")
    return [visible(line) for line in lines]
