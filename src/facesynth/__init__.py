"""facesynth: balanced, labelled, reproducible synthetic face datasets."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "iter_sets", "load"]


def load(dir_or_repo: str, split: str | None = None, **options):
    """Load a facesynth dataset, optionally filtered by label names.

    ``facesynth.load("demo", emotion="happy", gender=["female"])``; see :func:`facesynth.builder.load` for
    ``streaming``, ``revision``, ``columns``, ``wait`` and ``partial``.
    """
    from .builder import load as _load

    return _load(dir_or_repo, split=split, **options)


def iter_sets(dataset, columns: list[str] | None = None):
    """Each identity set of a loaded split as a list of rows, the reference first; see
    :func:`facesynth.builder.iter_sets`."""
    from .builder import iter_sets as _iter_sets

    return _iter_sets(dataset, columns)
