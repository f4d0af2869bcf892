"""The dataset folder's state: whose it is, what is finished, what is damaged, who writes what.

No torch here. ``generate`` asks :func:`open_folder` for the manifest to build on;
that refuses a folder made with other parameters, refuses damaged shards unless
``repair`` is set, keeps the shards of an earlier, smaller version of the same
dataset (growing a dataset), and gives each worker a manifest of its own.
:func:`merge` joins the workers' manifests into ``manifest.json``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputError
from .files import inside, is_temp_file
from .lazy import shard_file
from .lock import WORKERS_DIR
from ..plan import cell_key
from ..checks.quality import quality_report
from .writer import MANIFEST, WORK_DIR, Manifest, sha256_file

logger = logging.getLogger(__name__)

FIRST_VERSION = "1.0.0"
OWN_FILES = (MANIFEST, "README.md", "assets/samples.png", "assets/identities.png",  # files written besides the shards
             "evaluation.json")
OWN_FOLDERS = ("assets/evaluation/", "assets/verification/", "audit/")  # and what evaluate and audit write there


@dataclass(frozen=True)
class Worker:
    """Which part of the layout a process writes: shards ``index``, ``index + count``, ..."""

    index: int = 0
    count: int = 1

    @property
    def alone(self) -> bool:
        return self.count == 1

    @property
    def manifest_file(self) -> str:
        return MANIFEST if self.alone else f"{WORKERS_DIR}/{self.index:05d}-of-{self.count:05d}.json"

    @property
    def tmp_dir(self) -> str:
        return f"{WORK_DIR}/tmp/{'main' if self.alone else self.index}"

    def share(self, items: list) -> list:
        return items[self.index::self.count]


def worker_from(index: int | None, count: int | None, env: dict[str, str] | None = None) -> Worker:
    """Explicit ``--worker-index/--num-workers``, else the launcher's ``RANK``/``WORLD_SIZE``."""
    env = os.environ if env is None else env
    if index is None and count is None and int(env.get("WORLD_SIZE", "1")) > 1:
        index, count = int(env["RANK"]), int(env["WORLD_SIZE"])
    if count is None and index is None:
        return Worker()
    if count is None or index is None:
        raise OutputError("--worker-index and --num-workers: give both or neither")
    if count < 1 or not 0 <= index < count:
        raise OutputError(f"--worker-index: must be in 0..{count - 1} for --num-workers {count} (got {index})")
    return Worker(index, count)


def version_bump(version: str) -> str:
    """``1.0.0 -> 1.1.0``; a version that is not ``X.Y.Z`` gets ``.1`` appended."""
    parts = version.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return f"{parts[0]}.{int(parts[1]) + 1}.0"
    return f"{version}.1"


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_shards(root: Path, manifest: Manifest, names: list[str]) -> dict[str, str]:
    """Recorded shards among ``names`` that are missing, truncated or altered: name -> what is wrong."""
    damaged = {}
    for name in names:
        record = manifest.shards.get(name)
        if record is None:
            continue
        try:
            path = shard_file(root, name)
        except OutputError as exc:
            damaged[name] = str(exc).split(": ", 1)[-1]
            continue
        if not path.exists():
            damaged[name] = "missing"
        elif path.stat().st_size != record["bytes"]:
            damaged[name] = f"{path.stat().st_size} bytes, the manifest says {record['bytes']}"
        elif sha256_file(path) != record["sha256"]:
            damaged[name] = "sha256 differs from the manifest"
    return damaged


def is_dataset(out: Path) -> bool:
    """Whether ``out`` holds a facesynth manifest (a merged one, or a worker's) that says it is one: another
    program's ``manifest.json`` (a web app's, say) does not make a folder facesynth's."""
    return Manifest.peek(out / MANIFEST) or any(Manifest.peek(p) for p in (out / WORKERS_DIR).glob("*-of-*.json"))


def check_owner(out: Path, what: str = "--out") -> None:
    """Accept a missing folder, an empty one (but for facesynth's own ``.facesynth/``) or a facesynth dataset.

    Anything else holds someone's files, which facesynth must neither mix with its own nor replace.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"{what}: '{out}' exists and is not a folder")
    if not out.exists() or is_dataset(out):
        return
    try:
        foreign = sorted(p.name for p in out.iterdir() if p.name != WORK_DIR)
    except PermissionError:
        raise OutputError(f"{what}: cannot read '{out}': permission denied") from None
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise OutputError(f"{what}: '{out}' is not empty ({shown}) and holds no facesynth manifest; "
                          "use an empty folder (nothing was changed)")


def listed_files(out: Path, manifests: list[Manifest]) -> list[Path]:
    """What these manifests say a run wrote: shards, card and grid (when unchanged), and the manifests."""
    paths = []
    for manifest in manifests:
        paths += [inside(out, name) for name in manifest.shards]
        for name, digest in (manifest.get("files") or {}).items():
            path = inside(out, name)
            if (name in OWN_FILES or name.startswith(OWN_FOLDERS)) and path.is_file() and sha256_file(path) == digest:
                paths.append(path)  # facesynth's card or grid, as facesynth wrote it
        paths.append(Manifest.path(out, manifest.file))
    return paths


def clear_listed(out: Path, manifests: list[Manifest]) -> None:
    """Delete what the replaced run's manifests list (``--overwrite``), and nothing else."""
    listed = list(dict.fromkeys(listed_files(out, manifests)))
    for path in listed:
        if path.is_file():
            logger.info("--overwrite: removing %s", path)
            path.unlink()
    for folder in sorted({p.parent for p in listed}, key=lambda p: -len(p.parts)):
        if folder != out and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def remove_stale_temp_files(out: Path) -> None:
    """Temp files of facesynth's own writes, left by a killed process (call only while holding the folder)."""
    own = [out / f for f in OWN_FOLDERS]  # every file in them is facesynth's
    for folder in (out, out / "assets", *own):
        for path in folder.glob(".*") if folder.is_dir() else []:
            ours = folder in own or any(path.name.startswith(f".{Path(n).name}.") for n in OWN_FILES)
            if is_temp_file(path) and ours:
                path.unlink(missing_ok=True)


def tidy(out: Path, worker: Worker, created: bool) -> None:
    """Leave nothing the user did not ask for: this worker's temp folder, empty work folders, a folder we made."""
    shutil.rmtree(out / worker.tmp_dir, ignore_errors=True)
    for folder in (out / WORK_DIR / "tmp", out / WORKERS_DIR, out / WORK_DIR, *((out,) if created else ())):
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass


def open_folder(out: Path, header: dict[str, Any], layout_ids: dict[str, str], worker: Worker,
                held: list[str] | None = None, overwrite: bool = False, repair: bool = False,
                version: str | None = None, calls: dict[str, str] | None = None) -> tuple[Manifest, list[Manifest]]:
    """The manifest this process builds on (resumed, grown from an earlier version, or new), and
    the manifests of a run that ``--overwrite`` replaces (deleted later, by :func:`clear_listed`,
    once the new run has shown it can start). Call it holding the folder's lock.

    ``header`` is a fresh manifest (``fingerprint``, ``parameters``, ...); ``layout_ids``
    maps every shard of the layout to the digest of its sample ids; ``held`` names the shards this
    process makes (by default every ``worker.count``-th one); ``calls`` maps the shards that share calls
    with others to their group's digest (:func:`~facesynth.layout.call_contexts`). A shard is kept only
    where both match what the manifest records.
    """
    calls = calls or {}
    check_owner(out)
    main = Manifest.load(out) if out.exists() else None
    if main is not None and main.get("format") != header["format"] and not overwrite:
        from .reading import outdated

        raise OutputError(f"--out: {outdated(out, main)}")
    if overwrite:
        replaced = [m for m in [main, *(p for ps in worker_parts(out).values() for p in ps.values())] if m]
        fresh = Manifest(dict(header))
        fresh.data["version"] = version or FIRST_VERSION
        fresh.data["complete"] = False
        return fresh, replaced
    if not worker.alone:
        _refuse_other_runs(out, main, header)
    base = _base(out, main, header, layout_ids, version, calls)
    if not worker.alone:
        part = Manifest.load(out, worker.manifest_file)
        if part is not None and part.get("fingerprint") != header["fingerprint"]:
            if main is None:  # never merged: the part speaks for the folder, and refuses other parameters
                base = _base(out, part, header, layout_ids, version, calls)
            part = None
        if part is not None:
            part.shards.update({k: v for k, v in base.shards.items() if k not in part.shards})
            base = part
        base = Manifest(base.data, worker.manifest_file)
    mine = worker.share(list(layout_ids)) if held is None else held
    # a shard counts as ours only if it holds exactly the samples the layout puts there
    for name in [n for n, r in base.shards.items() if not _same(r, n, layout_ids, calls)]:
        del base.shards[name]
    damaged = check_shards(out, base, mine)
    if damaged and not repair:
        listing = "; ".join(f"{n} ({why})" for n, why in damaged.items())
        raise OutputError(f"--out: damaged shard(s): {listing}; run the same command with --repair "
                          "to regenerate only those")
    for name in damaged:
        logger.warning("repairing %s: %s", name, damaged[name])
        del base.shards[name]
        inside(out, name).unlink(missing_ok=True)
    base.data["complete"] = False
    return base, []


def _refuse_other_runs(out: Path, main: Manifest | None, header: dict[str, Any]) -> None:
    """A worker whose parameters differ from the run whose workers' manifests are here is refused at once, in
    one line, before it writes anything (a merged run's old parts, which a grow leaves, do not count)."""
    known = {header["fingerprint"], *((main.get("fingerprint"),) if main is not None else ())}
    for count, parts in worker_parts(out).items():
        for index, part in sorted(parts.items()):
            if part is None or part.get("fingerprint") in known:
                continue
            changed = changed_keys(part.get("parameters", {}), header["parameters"])
            raise OutputError(f"--out: '{out}' holds the manifest of worker {index} of {count} of a run with "
                              f"different {', '.join(changed) or 'parameters'}; start every worker with that run's "
                              "command (each resumes its own shards), or use another folder (nothing was changed)")


def _same(record: dict[str, Any], name: str, layout_ids: dict[str, str], calls: dict[str, str]) -> bool:
    """Whether a recorded shard holds what the layout puts there, made in the calls it would be made in (a
    shard an older facesynth wrote records no calls: its rows reproduce from their own ``batch`` column)."""
    return (name in layout_ids and record.get("ids") == layout_ids[name]
            and record.get("calls", calls.get(name)) == calls.get(name))


def _base(out: Path, main: Manifest | None, header: dict[str, Any], layout_ids: dict[str, str],
          version: str | None, calls: dict[str, str]) -> Manifest:
    """Resume ``main`` if it was made with the same parameters, grow it if only the size grew."""
    fresh = Manifest(dict(header))
    fresh.data["version"] = version or FIRST_VERSION
    if main is None:
        return fresh
    if main.get("fingerprint") == header["fingerprint"]:
        if version:
            main.data["version"] = version
        main.data.setdefault("version", FIRST_VERSION)
        main.data.update(layout=header["layout"], cells=header["cells"], generator=header["generator"])
        return main
    old, new = main.get("parameters", {}), header["parameters"]
    changed = changed_keys(old, new)
    if changed == ["num_samples"] and new["num_samples"] > old["num_samples"] and main.get("complete"):
        old_version = main.get("version", FIRST_VERSION)
        fresh.data["version"] = version or version_bump(old_version)
        fresh.data["previous"] = {"version": old_version, "num_samples": old["num_samples"],
                                  "cells": main.get("cells", {})}
        fresh.shards.update(main.shards)  # kept where the layout still puts the same samples
        for key in ("model", "clip_model", "loras", "verifiers", "attempts", "review", "files", "audit"):  # the same
            # commits of the model, adapters and verifiers, so old and new rows match; every sample keeps the
            # attempt review moved it to, and the review history stays
            if key in main.data:
                fresh.data[key] = main.data[key]
        kept = sum(1 for n, r in main.shards.items() if _same(r, n, layout_ids, calls))
        logger.info("growing %s from %d to %d samples (version %s -> %s); %d shards kept",
                    out, old["num_samples"], new["num_samples"], old_version, fresh.data["version"], kept)
        return fresh
    if changed == ["num_samples"] and main.get("complete"):
        why = f"{old['num_samples']} samples; a dataset can grow but not shrink"
    elif changed == ["num_samples"]:
        why = f"{old['num_samples']} samples and is not finished; finish it before growing it"
    else:
        from .pins import changed_inputs

        # a grow changes num_samples alone: name what else differs, not the size the user meant to change
        named = [k for k in changed if k != "num_samples"] or changed
        why = f"different {', '.join(named)}"
        if "inputs" in named:
            why = (f"other local model files ({changed_inputs(old.get('inputs'), new.get('inputs'))}); put back the "
                   "files it was made with" + (f", or it differs in {', '.join(k for k in named if k != 'inputs')} "
                                               "too" if len(named) > 1 else ""))
    raise OutputError(f"--out: '{out}' holds a dataset made with {why}; use another folder, "
                      "or --overwrite to replace it")


def cell_counts(samples) -> dict[str, int]:
    """Rows per label cell (all attributes), for the manifest and the card's changelog."""
    return dict(sorted(Counter(cell_key(s.labels) for s in samples).items()))


def worker_parts(out: Path) -> dict[int, dict[int, Manifest]]:
    """Workers' manifests: worker count -> worker index -> manifest."""
    parts: dict[int, dict[int, Manifest]] = {}
    folder = out / WORKERS_DIR
    for path in sorted(folder.glob("*-of-*.json")) if folder.exists() else []:
        index, count = (int(x) for x in path.stem.split("-of-"))
        parts.setdefault(count, {})[index] = Manifest.load(out, f"{WORKERS_DIR}/{path.name}")
    return parts


def merge(out: Path, count: int | None = None, strict: bool = True) -> Manifest | None:
    """Join finished workers' manifests into ``manifest.json``.

    Returns the merged manifest, or ``None`` (``strict=False``) while a worker is unfinished.
    """
    out = Path(out)
    groups = worker_parts(out)
    if not groups:
        raise OutputError(f"'{out}': no worker manifests in {WORKERS_DIR}/; was it generated with --num-workers?")
    if count is None:
        if len(groups) > 1:
            raise OutputError(f"'{out}': workers of several runs ({', '.join(map(str, groups))}); give --num-workers")
        count = next(iter(groups))
    by_index = groups.get(count, {})
    parts = list(by_index.values())
    prints = {p.get("fingerprint") for p in parts}
    if len(prints) > 1:
        raise OutputError(f"'{out}': worker manifests were made with different parameters")
    main = Manifest.load(out)
    if main is not None and parts and main.get("fingerprint") not in prints:
        old, new = main.get("parameters", {}), parts[0].get("parameters", {})
        if changed_keys(old, new) != ["num_samples"] or new["num_samples"] < old["num_samples"]:
            raise OutputError(f"'{out}': manifest.json was made with other parameters than the workers' manifests")
    unfinished = sorted(set(range(count)) - {i for i, p in by_index.items() if p.get("complete")})
    if unfinished:
        if not strict:
            return None
        raise OutputError(f"'{out}': worker(s) {', '.join(map(str, unfinished))} of {count} have not finished; "
                          "run them again (each resumes its own shards), then merge")
    merged = Manifest({k: v for k, v in parts[0].data.items() if k != "shards"})
    for part in parts:
        merged.shards.update(part.shards)
    missing = [n for n in merged["layout"] if n not in merged.shards]
    if missing:
        raise OutputError(f"'{out}': shard(s) {', '.join(missing[:3])} are in no worker's manifest")
    merged.data["shards"] = {n: merged.shards[n] for n in merged["layout"]}
    merged.data["workers"] = count
    merged.data["complete"] = True
    merged.data["quality"] = quality_report(merged.shards)
    merged.save(out)
    logger.info("merged %d workers into %s", count, Manifest.path(out))
    return merged
