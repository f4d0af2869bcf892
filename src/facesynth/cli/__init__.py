"""The ``facesynth`` command line: thin, one module per command family; :mod:`.core` holds the group, the
global options and the one map from errors to a line and an exit status. ``python -m facesynth.cli`` runs it."""

from . import audit, dataset, evaluate, generate, publish, recipes, review  # noqa: F401 - each registers its commands
from .core import main

__all__ = ["main"]
