"""Review verdicts: ``verdicts.jsonl`` in the dataset folder. No torch, no web server.

One JSON object per line, appended and fsynced before the reviewer sees it saved::

    {"sample_id": "s000042", "attempt": 0, "image": "9f2c...", "verdict": "reject", "reason": "six fingers",
     "time": "..."}

A verdict names one *row version*: the sample, the attempt it was made at and the digest
of the image the reviewer saw. The latest line for a row version wins, so ``restore``
undoes a ``reject``. A rejection is *pending* while the dataset still holds that row; ``generate`` on the
folder then makes the sample again at its next attempt (fresh seeds) and the
rejection becomes history, which the card reports. The file only grows: it is the
dataset's review log, published with it.

A server killed in the middle of a write can leave a last line without its newline;
that line was never acknowledged, so readers skip it and the next append cuts it off.
Any other unreadable line is damage: one clear error, and nothing is changed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import OutputError, shorten, visible
from ..folder.lazy import shard_file

logger = logging.getLogger(__name__)

VERDICTS = "verdicts.jsonl"
VERDICT_KINDS = ("reject", "restore")
MAX_REASON = 500


class VerdictError(OutputError):
    """The verdict file is damaged or names rows the dataset does not have."""


@dataclass(frozen=True)
class Verdict:
    sample_id: str
    attempt: int
    image: str  # image_digest of the row's PNG bytes
    verdict: str
    reason: str = ""
    time: str = ""

    @property
    def key(self) -> tuple[str, int, str]:
        return self.sample_id, self.attempt, self.image

    def to_json(self) -> dict[str, Any]:
        return {"sample_id": self.sample_id, "attempt": self.attempt, "image": self.image, "verdict": self.verdict,
                "reason": self.reason, "time": self.time}


def image_digest(png: bytes) -> str:
    """Names the exact pixels a verdict was given on."""
    return hashlib.sha256(png).hexdigest()[:16]


def verdicts_path(root: str | Path) -> Path:
    return Path(root) / VERDICTS


def _parse(line: str, where: str) -> Verdict:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise VerdictError(f"{where}: not JSON ({exc.msg}); fix or remove that line (nothing was changed)") from None
    if not isinstance(data, dict):
        raise VerdictError(f"{where}: not a JSON object (nothing was changed)")
    sid, attempt, kind = data.get("sample_id"), data.get("attempt"), data.get("verdict")
    if not isinstance(sid, str) or not sid:
        raise VerdictError(f"{where}: 'sample_id' must be a non-empty string (nothing was changed)")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise VerdictError(f"{where}: 'attempt' must be a whole number >= 0 "
                           f"(got {shorten(repr(attempt), 60)}; nothing was changed)")
    image = data.get("image")
    if not isinstance(image, str) or not image:
        raise VerdictError(f"{where}: 'image' must be the row's image digest (nothing was changed)")
    if kind not in VERDICT_KINDS:
        raise VerdictError(f"{where}: 'verdict' must be one of {', '.join(VERDICT_KINDS)} "
                           f"(got {shorten(repr(kind), 60)}; nothing was changed)")
    reason = data.get("reason") or ""
    if not isinstance(reason, str):
        raise VerdictError(f"{where}: 'reason' must be text (nothing was changed)")
    return Verdict(sid, attempt, image, kind, reason, str(data.get("time") or ""))


def read_verdicts(root: str | Path, limit: int | None = None) -> list[Verdict]:
    """Every verdict in file order (empty when there is no file); a torn last line is skipped.

    ``limit`` reads only the file's first ``limit`` bytes: the snapshot a review round took when it started.
    A last line without its newline counts if it is a whole verdict (added by hand); a part of one is torn.
    """
    path = verdicts_path(root)
    try:
        with open(path, "rb") as f:
            raw = f.read() if limit is None else f.read(limit)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise VerdictError(f"'{path}': cannot read ({exc.strerror or exc})") from None
    lines = raw.split(b"\n")
    if lines[-1] and _whole(lines[-1]) is None:
        logger.warning("'%s': the last line is unfinished (a write was cut off); it is ignored", path)
        lines[-1] = b""
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise VerdictError(f"'{path}' line {number}: not UTF-8 text (nothing was changed)") from None
        out.append(_parse(text, f"'{path}' line {number}"))
    return out


def _whole(line: bytes) -> Verdict | None:
    """The verdict a line holds, or None if it is not one whole verdict (a torn write)."""
    try:
        return _parse(line.decode("utf-8"), "")
    except (UnicodeDecodeError, VerdictError):
        return None


def snapshot_size(root: str | Path) -> int:
    """The verdict file's size up to its last whole verdict: what a review round starting now takes."""
    try:
        raw = verdicts_path(root).read_bytes()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise VerdictError(f"'{verdicts_path(root)}': cannot read ({exc.strerror or exc})") from None
    cut = raw.rfind(b"\n") + 1
    return len(raw) if raw[cut:] and _whole(raw[cut:]) is not None else cut


def latest(verdicts: Iterable[Verdict]) -> dict[tuple[str, int, str], Verdict]:
    """The verdict in force for each row version: the last one written."""
    out: dict[tuple[str, int, str], Verdict] = {}
    for v in verdicts:
        out[v.key] = v
    return out


@dataclass(frozen=True)
class Row:
    """What a verdict is matched against: a row the dataset holds now, and its shard."""

    attempt: int
    image: str
    shard: str


def current_rows(root: str | Path, shards: Iterable[str], sample_ids: Iterable[str]) -> dict[str, Row]:
    """The rows with these sample ids, read through a Parquet filter (only their row groups are read)."""
    import pyarrow.dataset as pads

    wanted = sorted(set(sample_ids))
    out: dict[str, Row] = {}
    if not wanted:
        return out
    root = Path(root)
    for name in shards:
        table = pads.dataset(str(shard_file(root, name)), format="parquet").to_table(
            columns=["sample_id", "attempt", "image"], filter=pads.field("sample_id").isin(wanted))
        for sid, attempt, image in zip(table["sample_id"].to_pylist(), table["attempt"].to_pylist(),
                                       table["image"].to_pylist()):
            out[sid] = Row(attempt, image_digest(image["bytes"]), name)
    return out


def set_aside_verdicts(root: str | Path) -> Path | None:
    """Move the review log out of the way of a dataset that replaces the rows it judged (``--overwrite``): to
    ``.facesynth/replaced/verdicts-TIME.jsonl``, kept, never published, never read again; where it went."""
    path = verdicts_path(root)
    if not path.is_file():
        return None
    aside = Path(root) / ".facesynth" / "replaced" / f"verdicts-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.jsonl"
    aside.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, aside)
    logger.warning("--overwrite: the review log of the replaced rows was moved to %s (kept, not published)", aside)
    return aside


def check_known(root: str | Path, verdicts: Iterable[Verdict], sample_ids: set[str] | dict) -> None:
    """Every verdict must name a sample of this dataset."""
    for v in verdicts:
        if v.sample_id not in sample_ids:
            raise VerdictError(f"'{verdicts_path(root)}': names sample '{shorten(v.sample_id, 60)}', which is not in "
                               "this "
                               "dataset (was the file copied from another one?); nothing was changed")


def pending(verdicts: Iterable[Verdict], rows: dict[str, Row]) -> dict[str, Verdict]:
    """sample_id -> the rejection of the row the dataset holds now (what ``generate`` replaces)."""
    out = {}
    for (sid, attempt, image), v in latest(verdicts).items():
        row = rows.get(sid)
        if v.verdict == "reject" and row is not None and (row.attempt, row.image) == (attempt, image):
            out[sid] = v
    return out


def reason_counts(verdicts: Iterable[Verdict]) -> Counter:
    return Counter(v.reason.strip() or "(no reason given)" for v in verdicts)


def clean_reason(reason: Any) -> str:
    """One line of at most ``MAX_REASON`` characters."""
    if reason is None:
        return ""
    if not isinstance(reason, str):
        raise VerdictError(f"reason: must be text (got {type(reason).__name__})")
    return visible(" ".join(reason.split()))[:MAX_REASON]  # no control or bidi character reaches a page or card


def append_verdicts(root: str | Path, entries: Iterable[Verdict]) -> list[Verdict]:
    """Append verdicts and fsync them; return them only once every byte is on disk.

    Writers on one folder (two review pages, two servers) take turns through an ``flock`` on the file
    itself, so no lock file is left behind. A torn last line (a writer killed mid-line) is cut off first,
    and a whole last line without its newline gets one, so neither glues onto the new line. A write that
    fails or comes up short (a full disk) is undone: the file is cut back to what it held, and the caller
    gets a :class:`VerdictError`; nothing is acknowledged that is not on disk.
    """
    import fcntl

    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entries = [replace(e, time=e.time or stamp) for e in entries]
    if not entries:
        return []
    payload = "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in entries).encode()
    path = verdicts_path(root)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as exc:
        raise VerdictError(f"'{path}': cannot write ({exc.strerror or exc}); the verdict was not saved") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        payload = _mend_tail(fd, path) + payload
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, payload)
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            except OSError:
                logger.warning("'%s': could not cut back a failed write", path)
            raise VerdictError(f"'{path}': cannot write ({exc.strerror or exc}); the verdict was not saved") from None
    finally:
        os.close(fd)  # releases the flock
    return entries


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written; a write that makes no progress is a full disk."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def _mend_tail(fd: int, path: Path) -> bytes:
    """Cut off a torn last line; return the newline a whole last line lacks (b"" if it needs none)."""
    size = os.fstat(fd).st_size
    if not size:
        return b""
    tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
    if tail.endswith(b"\n"):
        return b""
    cut = tail.rfind(b"\n")
    if cut < 0 and size > len(tail):
        raise VerdictError(f"'{path}': the last line is longer than 64 KiB and unfinished; fix or remove it "
                           "(nothing was changed)")
    if _whole(tail[cut + 1:]) is not None:
        return b"\n"  # a whole verdict written without its newline: kept
    keep = size - len(tail) + cut + 1
    logger.warning("'%s': cutting off an unfinished last line (%d bytes)", path, size - keep)
    os.ftruncate(fd, keep)
    return b""


def review_state(root: str | Path, shards: Iterable[str], sample_ids: set[str] | dict,
                 limit: int | None = None) -> tuple[dict[str, Verdict], dict[str, Row]]:
    """Rejections pending now (sample_id -> verdict) and the rows the verdicts name; ``limit`` reads only the
    verdicts of a snapshot (see :func:`read_verdicts`)."""
    verdicts = read_verdicts(root, limit)
    if not verdicts:
        return {}, {}
    check_known(root, verdicts, sample_ids)
    rows = current_rows(root, shards, (v.sample_id for v in verdicts))
    return pending(verdicts, rows), rows
