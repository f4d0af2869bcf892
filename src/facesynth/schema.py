"""The one place where the dataset's ``datasets.Features`` are built."""

from __future__ import annotations

from datasets import ClassLabel, Features, Image, List, Value

from .recipe import SPEEDUPS, Recipe

SETTING_COLUMNS = ("steps", "guidance", "scheduler", "width", "height", *SPEEDUPS)
# Columns added after the first formats: a folder written in an older format has none of them.
ADDED_IN_FORMAT = dict.fromkeys(SPEEDUPS, 5)


def features(recipe: Recipe, format: int | None = None) -> Features:
    """Columns of a facesynth dataset: id, image, one ClassLabel per attribute, provenance.

    ``format`` (a manifest's) leaves out the columns that format did not have yet.
    """
    cols: dict = {"sample_id": Value("string"), "image": Image()}
    for name, attr in recipe.attributes.items():
        cols[name] = ClassLabel(names=list(attr.values))
    cols.update(
        prompt=Value("string"),
        negative_prompt=Value("string"),
        caption=Value("string"),
        seed=Value("int64"),
        clip_score=Value("float32"),
        candidate_scores=List(Value("float32")),
        candidate_index=Value("int32"),
        label_confidence=Value("float32"),
        attempt=Value("int32"),
        batch=List(Value("string")),
        unet_calls=List(Value("int32")),
        clip_embedding=List(Value("float32")),
        face_box=List(Value("int32")),
        safety_score=Value("float32"),
        steps=Value("int32"),
        guidance=Value("float32"),
        scheduler=Value("string"),
        width=Value("int32"),
        height=Value("int32"),
        prune_at=Value("float32"),  # null: every candidate ran to the end
        keep=Value("int32"),
        cfg_until=Value("float32"),  # null: guidance on every step
    )
    if format is not None:
        cols = {k: v for k, v in cols.items() if ADDED_IN_FORMAT.get(k, 0) <= format}
    return Features(cols)


def label_ids(recipe: Recipe, filters: dict[str, str | list[str]]) -> dict[str, list[int]]:
    """Map label names to ClassLabel ids, e.g. ``{"emotion": "happy"} -> {"emotion": [0]}``."""
    if not isinstance(filters, dict):
        raise KeyError(f"must map attributes to value names, e.g. {{'{recipe.primary}': "
                       f"'{next(iter(recipe.attributes[recipe.primary].values))}'}} (got {type(filters).__name__})")
    out = {}
    for attr, wanted in filters.items():
        if attr not in recipe.attributes:
            raise KeyError(f"'{attr}' is not an attribute ({', '.join(recipe.attributes)})")
        names = list(recipe.attributes[attr].values)
        if isinstance(wanted, (list, tuple, set, frozenset)) and wanted and all(isinstance(v, str) for v in wanted):
            wanted = list(wanted)
        elif isinstance(wanted, str):
            wanted = [wanted]
        else:
            raise KeyError(f"{attr}: give a value name or a list of them ({', '.join(names)}), not "
                           f"{type(wanted).__name__} {wanted!r:.40}")
        for value in wanted:
            if value not in names:
                raise KeyError(f"'{value}' is not a value of '{attr}' ({', '.join(names)})")
        out[attr] = [names.index(v) for v in wanted]
    return out
