"""The pipeline families facesynth runs, and which one runs a given pipeline (each family imports only
:mod:`.family`, the interface, so this registry is the one place that names them all)."""

from __future__ import annotations

from ..errors import ModelError
from .family import Family


def _families() -> list[Family]:
    from . import flux, sd, sd3, sdxl

    return [sd.FAMILY, sdxl.FAMILY, sd3.FAMILY, flux.FAMILY]


def family_for_class(name: str) -> Family | None:
    """The family of a diffusers pipeline class name (``StableDiffusion3Pipeline``), or None: the longest
    class-name prefix that matches (``StableDiffusionXL`` before ``StableDiffusion``)."""
    matching = [f for f in _families() if name.startswith(f.pipeline)]
    return max(matching, key=lambda f: len(f.pipeline), default=None)


def family_of(pipe) -> Family:
    """The family that runs this pipeline; one line naming what facesynth runs otherwise."""
    name = type(pipe).__name__
    family = family_for_class(name)
    if family is not None:
        return family
    runs = ", ".join(f"{f.pipeline}Pipeline" for f in _families())
    raise ModelError(f"--model: a {name} is not a pipeline facesynth runs ({runs})")


def family_named(name: str) -> Family:
    return next(f for f in _families() if f.name == name)
