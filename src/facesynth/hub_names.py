"""The names a push sends to the Hub, checked before anything is sent: a dataset repo id and git ref names."""

from __future__ import annotations

from .errors import FacesynthError


def check_repo_id(repo_id: str) -> None:
    """One line unless ``repo_id`` is a dataset repo id of the form ORG/NAME."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("no namespace")
    except HFValidationError:
        raise FacesynthError(f"--repo-id: '{repo_id}' is not a dataset repo id of the form ORG/NAME") from None


_REF_FORBIDDEN = set(" ~^:?*[\\\x7f")


def check_ref(name: str, what: str) -> None:
    """One line unless ``name`` is a valid git ref name (``git check-ref-format`` rules), checked before
    anything is sent: a tag or branch the Hub would refuse after the upload is refused here instead."""
    why = None
    if not name:
        why = "is empty"
    elif any(ord(c) < 32 or c in _REF_FORBIDDEN for c in name):
        bad = next(c for c in name if ord(c) < 32 or c in _REF_FORBIDDEN)
        why = f"holds {bad!r}, which git refs may not"
    elif name.startswith("-"):
        why = "starts with '-'"
    elif name == "@" or "@{" in name:
        why = "is '@' or holds '@{'"
    elif ".." in name or "//" in name:
        why = f"holds '{'..' if '..' in name else '//'}'"
    elif name.startswith("/") or name.endswith("/") or name.endswith("."):
        why = "starts or ends with '/', or ends with '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        why = "has a part that starts with '.' or ends with '.lock'"
    elif len(name) > 200:
        why = "is longer than 200 characters"
    if why:
        shown = f"'{name}'" if name.isprintable() and len(name) <= 60 else repr(name[:60])
        raise FacesynthError(f"{what}: {shown} is not a valid tag or branch name: it {why}")
