"""Writing files so that readers see the old content or the new, never a part.

Every file facesynth writes outside ``.facesynth/`` goes through :func:`atomic_write`:
a temp file with a unique name beside the target (``.NAME.XXXXXXXX.tmp``), fsynced,
then renamed over it. Two processes or threads never share a temp name, and a temp
file left by a killed process is recognisable (``validate`` lists them).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a unique temp file beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
