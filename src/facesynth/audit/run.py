"""``facesynth audit``: how a classifier does on each group of a dataset, and whether its prediction flips when
only one attribute changes. Input checks come first (before any model loads), then the predictions, then the
figures, then the report; with ``card`` the report goes into the dataset folder, is listed in its manifest and
shows in its card."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..folder.reading import content_fingerprint, read_manifest
from ..recipe import recipe_of
from .predict import AuditError, load_classifier, predict
from .report import MEANING, write

logger = logging.getLogger(__name__)

FORMAT = 1
AUDIT_DIR = "audit"  # the report folder inside a dataset, with --card


def audit(root: str | Path, model: str, attribute: str | None = None, split: str = "test",
          mapping: dict[str, str] | None = None, out: str | Path | None = None, revision: str | None = None,
          device: str = "auto", seed: int = 0, rounds: int = 1000, min_group: int = 20, card: bool = False,
          counterfactual: bool | None = None, progress: bool = True) -> dict[str, Any]:
    """Audit ``model`` on ``root``'s ``split``; write the report to ``out`` (default ``ROOT/audit``)."""
    import pandas as pd

    from ..generation.loading import resolve_device
    from .counterfactual import counterfactual as counterfactual_figures
    from .figures import all_groups

    root = Path(root)
    manifest = read_manifest(root, current=True)
    if not manifest.get("complete") or not manifest.shards:
        raise OutputError(f"'{root}': not a finished dataset; run the same generate command to finish it, then audit")
    recipe = recipe_of(manifest)
    attribute = attribute or recipe.primary
    if attribute not in recipe.attributes:
        raise AuditError(f"--attribute: '{attribute}' is not an attribute of the dataset ({', '.join(recipe.attributes)})")
    held = sorted({r["split"] for r in manifest.shards.values()}, key=list(recipe.splits).index)
    if split not in held:
        raise AuditError(f"--split: '{split}' is not a split of '{root}' ({', '.join(held)})")
    if counterfactual and recipe.identities is None:
        raise AuditError("--counterfactual: this dataset has no identity sets; counterfactual figures need rows made "
                         "as sets (generate with --identities ATTR, e.g. --identities gender for pairs)")
    report = Path(out) if out is not None else root / AUDIT_DIR
    if card and report.resolve() != (root / AUDIT_DIR).resolve():
        raise AuditError(f"--out: with --card the report goes into the dataset folder ({root / AUDIT_DIR})")
    _check_report_folder(report)
    classifier, record = load_classifier(model, revision, dict(mapping or {}), recipe, attribute,
                                         resolve_device(device))
    new = not report.exists()
    report.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    staging = report / ".predictions.parquet.tmp"
    try:
        rows = predict(root, manifest, recipe, classifier, attribute, split, staging, progress)
    except BaseException:  # nothing half-written stays: the staging file, and the folder if this run made it
        staging.unlink(missing_ok=True)
        if new and not any(report.iterdir()):
            report.rmdir()
        raise
    staging.replace(report / "predictions.parquet")
    frame = pd.read_parquet(report / "predictions.parquet")
    values = list(recipe.attributes[attribute].values)
    others = [a for a in recipe.attributes if a != attribute]
    result: dict[str, Any] = {
        "format": FORMAT, "meaning": MEANING, "attribute": attribute, "split": split, "values": values,
        "classifier": record, "data": {"fingerprint": content_fingerprint(manifest), "rows": rows,
                                       "version": manifest.get("version")},
        "settings": {"seed": seed, "rounds": rounds, "min_group": min_group, "map": dict(mapping or {})},
        **all_groups(frame, attribute, values, others, min_group, seed, rounds), "counterfactual": None,
    }
    if recipe.identities is not None and counterfactual is not False:
        fixed = [a for a in recipe.attributes if a not in recipe.identities.vary]
        result["counterfactual"] = counterfactual_figures(frame, attribute, recipe.identities.vary, fixed, min_group,
                                                          seed, rounds)
    names = write(report, result)
    if card:
        _to_card(root, [f"{AUDIT_DIR}/{n}" for n in [*names, "predictions.parquet"]], record)
    logger.info("audit of %s on %s: %d rows in %.1f s", model, root, rows, time.perf_counter() - start)
    return {**result, "seconds": round(time.perf_counter() - start, 3), "out": str(report)}


def _check_report_folder(report: Path) -> None:
    """The report folder is new, empty, or an earlier audit's (its files are replaced, nothing else touched)."""
    ours = {"audit.json", "audit.md", "predictions.parquet", "confusion.png"}
    if report.exists() and not report.is_dir():
        raise AuditError(f"--out: '{report}' exists and is not a folder")
    if report.is_dir():
        foreign = [p.name for p in report.iterdir() if p.name not in ours and not p.name.startswith("accuracy-")
                   and not p.name.startswith(".")]
        if foreign and not (report / "audit.json").is_file():
            raise AuditError(f"--out: '{report}' holds files that are not an audit's ({', '.join(sorted(foreign)[:3])}); "
                             "give an empty or new folder")


def _to_card(root: Path, files: list[str], record: dict[str, Any]) -> None:
    """List the report in the manifest (so push publishes it and --overwrite may remove it) and refresh the card."""
    from ..dataset_card.card import foreign_readme, write_card
    from ..folder.lock import FolderLock
    from ..folder.writer import sha256_file

    with FolderLock(root, "DIRECTORY"):
        manifest = read_manifest(root, current=True)
        listed = {k: v for k, v in (manifest.get("files") or {}).items() if not k.startswith(AUDIT_DIR + "/")}
        listed.update({name: sha256_file(root / name) for name in files})
        manifest.data["files"] = listed
        manifest.data["audit"] = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "model": record["model"],
                                  "commit": record.get("commit"), "sha256": record.get("sha256")}
        manifest.save(root)
        if not foreign_readme(root):
            made = manifest.get("card") or {}
            write_card(root, made.get("repo_id"), made.get("revision"), bool(made.get("gated")))
