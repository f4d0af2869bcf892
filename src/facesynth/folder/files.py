"""Writing files so that readers see the old content or the new, never a part.

Every file facesynth writes outside ``.facesynth/`` goes through :func:`atomic_write`:
a temp file with a unique name beside the target (``.NAME.XXXXXXXX.tmp``), fsynced,
then renamed over it. Two processes or threads never share a temp name, and a temp
file left by a killed process is recognisable (``validate`` lists them).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..errors import OutputError, WriteError

TEMP_SUFFIX = ".tmp"
NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p``, returning the folders it created (outermost first), so a failed write can remove them."""
    made = []
    for path in [*reversed(folder.parents), folder]:
        if not path.exists():
            try:
                path.mkdir()
            except FileExistsError:
                continue
            made.append(path)
    return made


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a unique temp file beside ``path``; on success fsync it and rename it over ``path``.

    The file gets the permissions any new file gets (``0666`` less the umask), like the shards. A write
    that fails (a full disk, a read-only folder) leaves the old file, removes the temp file and any
    folder made for it, and is one :class:`WriteError` naming the file.
    """
    path = Path(path)
    made: list[Path] = []
    tmp = None
    try:
        made = _make_parents(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600 whatever the umask
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
            raise WriteError(f"'{path}': cannot write ({exc.strerror or exc}); it was left as it was") from exc
        raise


def safe_name(name: Any, what: str = "manifest.json") -> str:
    """A file name a manifest gives, if it is a plain relative path inside the folder (no ``..``, not
    absolute, no backslash or empty part); else one line naming it."""
    if not isinstance(name, str) or not name:
        raise OutputError(f"{what}: {name!r} is not a file name")
    parts = name.split("/")
    if (name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts)
            or not name.isprintable() or ":" in parts[0]):
        raise OutputError(f"{what}: names the file {name!r}, which is not a plain path inside the dataset folder")
    return name


def inside(root: Path, name: str, what: str = "manifest.json") -> Path:
    """``root / name`` after :func:`safe_name`, refusing a path that leaves ``root`` through a symbolic link."""
    path = Path(root) / safe_name(name, what)
    real_root = Path(root).resolve()
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        raise OutputError(f"{what}: '{name}' cannot be resolved inside '{root}'") from None
    if resolved != real_root and real_root not in resolved.parents:
        raise OutputError(f"{what}: '{name}' leads out of '{root}' (through a symbolic link); refused")
    return path


def dumps_json(data: Any) -> str:
    """Strict JSON as facesynth writes it (a NaN or infinity is an error, never a bare ``NaN``)."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json_atomic(path: str | Path, data: Any) -> None:
    """:func:`dumps_json`, written atomically."""
    text = dumps_json(data)
    with atomic_write(path) as f:
        f.write(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_json(text: str) -> Any:
    """Parse strict JSON: ``NaN`` and ``Infinity`` are refused like any other syntax error."""
    return json.loads(text, parse_constant=_refuse_constant)


def load_json(path: str | Path) -> Any:
    """:func:`loads_json` of a file."""
    with open(path, encoding="utf-8") as f:
        return loads_json(f.read())


def is_temp_file(path: Path) -> bool:
    """A temp file of :func:`atomic_write`, left behind by a process that was killed."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)
