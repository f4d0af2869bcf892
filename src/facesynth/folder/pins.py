"""Local model inputs pinned by content: what a Hub model's commit is to a folder or a file on this machine.

A run records, in its parameters, the sha256 of every file that defines each local input (the model, its
config folder, the CLIP, each verifier): configs, processors, tokenizers and weights, found by
:data:`PATTERNS` below the folder (links followed, so a link that now points elsewhere is a changed input).
A resumed or grown run, ``reproduce`` and ``validate --reproduce`` compare them and name the file that
changed. Hub ids and local paths are told apart by :func:`looks_local`, so a path that is gone is "no such
file or folder", never a Hub lookup.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .writer import sha256_file

# The files that define a model: configs, processor and tokenizer files, weights (safetensors, ONNX).
PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors", "*.onnx", "*.tiktoken")


def looks_local(name: str) -> bool:
    """A path rather than a Hub id (``name`` or ``owner/name``): absolute, starting with ``.`` or ``~``, with a
    ``..`` part, a backslash or more than one ``/``, or naming something that exists here."""
    text = str(name)
    return (text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1
            or ".." in text.split("/") or Path(text).expanduser().exists())


def local_record(name: str | None) -> dict[str, str]:
    """``{"path": the absolute path}`` for a local input (kept on this machine for resume and ``reproduce``,
    dropped by ``push``); empty for a Hub id or a test model."""
    from ..tiny import is_tiny

    if not name or is_tiny(name) or name == "tiny" or not looks_local(name):
        return {}
    return {"path": str(Path(name).expanduser().resolve())}


def same_source(a: str | None, b: str | None) -> bool:
    """Whether two model names are one model: equal Hub ids, or local paths to the same place."""
    if a is None or b is None:
        return a == b
    if looks_local(a) and looks_local(b):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return a == b


def local_path(name: str, where: str, folder: bool | None = None) -> Path:
    """``name`` as an existing local path (``~`` expanded), or one line: no such file or folder, or a file where a
    folder is expected (``folder=True``) and the other way round (``folder=False``)."""
    path = Path(name).expanduser()
    if not path.exists():
        kind = "folder" if folder else "file" if folder is False else "file or folder"
        raise ModelError(f"{where}: no such {kind} '{name}'")
    if folder is True and not path.is_dir():
        raise ModelError(f"{where}: '{name}' is a file; give the model's folder (its config.json and weights)")
    if folder is False and not path.is_file():
        raise ModelError(f"{where}: '{name}' is a folder; give the file itself")
    return path


def defining_files(path: Path) -> list[Path]:
    """The files that define a model folder (``PATTERNS``, hidden folders such as ``.cache`` left out), or the
    file itself."""
    path = Path(path)
    if path.is_file():
        return [path]
    found = {p for pattern in PATTERNS for p in path.rglob(pattern) if p.is_file()}
    return sorted((p for p in found if not any(part.startswith(".") for part in p.relative_to(path).parts)),
                  key=lambda p: p.relative_to(path).as_posix())


def pin(path: str | Path) -> dict[str, Any]:
    """``{"sha256": digest of the whole, "files": {relative name: sha256}}`` for a local folder or file."""
    path = Path(path).expanduser()
    files = {(p.name if path.is_file() else p.relative_to(path).as_posix()): sha256_file(p)
             for p in defining_files(path)}
    whole = hashlib.sha256("\n".join(f"{k} {v}" for k, v in files.items()).encode()).hexdigest()
    return {"sha256": whole, "files": files}


def difference(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first file that differs between two pins, in words (None when they are the same)."""
    old, new = recorded.get("files") or {}, current.get("files") or {}
    for name in sorted(set(old) | set(new)):
        if name not in new:
            return f"{name} is gone"
        if name not in old:
            return f"{name} was added"
        if old[name] != new[name]:
            return f"{name} differs (sha256 {new[name][:12]}, recorded {old[name][:12]})"
    return None


def check_pin(path: str | Path, recorded: dict[str, Any] | None, where: str) -> None:
    """One line when the local input at ``path`` is not the one recorded (``recorded`` None: nothing to check)."""
    if not recorded:
        return
    changed = difference(recorded, pin(path))
    if changed:
        raise ModelError(f"{where}: '{Path(path).name}' changed since the dataset was made: {changed}; put back "
                         "the files it was made with")


def changed_inputs(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str | None:
    """What differs between two runs' pinned local inputs (role -> pin), naming the role and the file."""
    old, new = old or {}, new or {}
    for role in sorted(set(old) | set(new)):
        if role not in old or role not in new:
            return f"{role}: a local input in one run and not in the other"
        changed = difference(old[role], new[role])
        if changed:
            return f"{role}: {changed}"
    return None


def recorded(path: str | None, inputs: dict[str, Any] | None, role: str, where: str) -> str | None:
    """A local input where the manifest recorded it, checked to hold the files the run pinned (``inputs``: the
    run parameters' pins by role); None when nothing local was recorded."""
    if not path:
        return None
    found = local_path(path, where)
    check_pin(found, (inputs or {}).get(role), where)
    return str(found)
