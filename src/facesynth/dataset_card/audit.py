"""The card's Audit section, from ``audit/audit.json`` where ``facesynth audit --card`` put it: the classifier,
its pin and the date, overall accuracy, the largest gap between groups, counterfactual flip rates, and the
report's pictures. The file is read as the audit wrote it (listed in the manifest with its sha256); one older
than the data is shown as such, and ``validate`` reports it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..folder.files import load_json
from .escape import md
from ..folder.reading import content_fingerprint
from ..folder.writer import sha256_file

logger = logging.getLogger(__name__)

AUDIT_JSON = "audit/audit.json"


def for_card(root: Path, manifest) -> dict[str, Any] | None:
    """What the Audit section shows (None without an audit in the card)."""
    listed = manifest.get("files") or {}
    path = Path(root) / AUDIT_JSON
    if AUDIT_JSON not in listed or not path.is_file():
        return None
    if sha256_file(path) != listed[AUDIT_JSON]:
        logger.warning("'%s': changed since facesynth audit wrote it; the card has no Audit section", path)
        return None
    data = load_json(path)
    gaps = [(name, g) for name, g in data["groups"].items() if g.get("difference") is not None]
    widest = max(gaps, key=lambda kv: (kv[1]["difference"], len(kv[1]["by"]) == 1, kv[0]), default=(None, None))
    return {**data, "meaning": md(data.get("meaning") or "", limit=400), "made": manifest.get("audit") or {}, "widest": widest[0], "gap": widest[1],
            "stale": (data.get("data") or {}).get("fingerprint") != content_fingerprint(manifest),
            "pictures": sorted(n for n in listed if n.startswith("audit/") and n.endswith(".png"))}


def stale(root: Path, manifest) -> str | None:
    """Why the listed audit does not describe the data (None when it does, or there is none)."""
    listed = manifest.get("files") or {}
    path = Path(root) / AUDIT_JSON
    if AUDIT_JSON not in listed or not path.is_file():
        return None
    try:
        made = (load_json(path).get("data") or {})
    except (OSError, ValueError):
        return f"not readable JSON; run `{_again(root, manifest)}`"
    if made.get("fingerprint") != content_fingerprint(manifest):
        return (f"older than the data (it audited {made.get('rows')} rows of version {made.get('version')}); run "
                f"`{_again(root, manifest)}`")
    return None


def _again(root: Path, manifest) -> str:
    model = (manifest.get("audit") or {}).get("model") or "MODEL"
    return f"facesynth audit {root} --model {model} --card"
