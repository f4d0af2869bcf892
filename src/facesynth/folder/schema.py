"""The one place where the dataset's ``datasets.Features`` are built."""

from __future__ import annotations

from typing import Any

from datasets import ClassLabel, Features, Image, List, Value

from ..recipe import SPEEDUPS, Recipe

SETTING_COLUMNS = ("steps", "guidance", "scheduler", "width", "height", *SPEEDUPS)
# Columns added after the first formats: a folder written in an older format has none of them.
ADDED_IN_FORMAT = dict.fromkeys(SPEEDUPS, 5)
# From format 6 every row collates with torch's default collate: no null, no ragged list. The batch
# provenance is a space-separated string, the measured-only columns exist only where the run measured
# them, and a speed-up that is off is written as its no-op value (prune_at 1.0 with keep = candidates:
# every candidate runs every step; cfg_until 1.0: guidance on every step).
COLLATE_SAFE_FORMAT = 6
MEASURED = {"face_box": "faces", "safety_score": "safety"}  # column -> the gate that measures it


def measured_columns(quality: dict | None) -> frozenset[str]:
    """The measured-only columns a run with these gates (a manifest's ``quality`` settings) writes."""
    return frozenset(col for col, gate in MEASURED.items() if (quality or {}).get(gate))


def verified_attributes(manifest) -> list[str]:
    """The attributes a folder's run verified (see :mod:`facesynth.verifiers`), in the recipe's order."""
    return list(((manifest.get("parameters") or {}).get("verify") or {}))


def verified_columns(attribute: str) -> tuple[str, str]:
    """The verdict column and the probability column of a verified attribute."""
    return f"verified_{attribute}", f"verified_{attribute}_probability"


def features_of(recipe: Recipe, manifest) -> Features:
    """The columns of the folder a manifest describes: its format's, with the measured columns its gates wrote
    and the verified attributes' columns."""
    quality = (manifest.get("parameters") or {}).get("quality") or (manifest.get("generation") or {}).get("quality")
    return features(recipe, manifest.get("format", 0), measured_columns(quality), verified_attributes(manifest))


def identity_columns(recipe: Recipe, verified: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The columns identity sets add after ``label_confidence`` (``identity`` and ``reference`` follow
    ``sample_id``): each member's cosine to its reference, the fixed attributes whose verifier verdict drifted
    from the reference's (where a fixed attribute is verified), the identity embedding (where it is not CLIP's)."""
    spec = recipe.identities
    if spec is None:
        return {}
    out: dict[str, Any] = {"identity_similarity": Value("float32")}
    if any(a not in spec.vary for a in verified):
        out["identity_leaks"] = Value("string")  # space-separated attribute names; "" when none drifted
    if spec.embedder != "clip":
        out["identity_embedding"] = List(Value("float32"))
    return out


def features(recipe: Recipe, format: int | None = None, measured: frozenset[str] | None = None,
             verified: list[str] | tuple[str, ...] = ()) -> Features:
    """Columns of a facesynth dataset: id, image, one ClassLabel per attribute, provenance.

    ``format`` (a manifest's) leaves out the columns that format did not have yet and keeps the
    older types; ``measured`` names the measured-only columns present (from format 6; all of them
    before). Each ``verified`` attribute adds its verifier's verdict (a ClassLabel over the values and
    ``other``) and its probability of the row's value, after ``label_confidence``.
    """
    if format is None or format >= COLLATE_SAFE_FORMAT:
        cols = dict(_collate_safe(recipe, measured or frozenset()))
        out = {}
        for name, feature in cols.items():
            out[name] = feature
            if name == "sample_id" and recipe.identities is not None:
                out.update(identity=Value("string"), reference=Value("string"))
            if name == "label_confidence":
                for attr in verified:
                    verdict, probability = verified_columns(attr)
                    out[verdict] = ClassLabel(names=[*recipe.attributes[attr].values, "other"])
                    out[probability] = Value("float32")
                out.update(identity_columns(recipe, verified))
        return Features(out)
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


def _collate_safe(recipe: Recipe, measured: frozenset[str]) -> Features:
    old = features(recipe, COLLATE_SAFE_FORMAT - 1)
    cols = {}
    for name, feature in old.items():
        if name in MEASURED and name not in measured:
            continue
        cols[name] = Value("string") if name in ("batch", "unet_calls") else feature
    if "face_box" in cols:
        cols["face_box"] = List(Value("int32"), length=4)
    return Features(cols)


def row_provenance(batch: list[str], unet_calls: list[int], settings: dict, candidates: int) -> dict:
    """The batch and speed-up columns of a row as format 6 writes them (see ``COLLATE_SAFE_FORMAT``)."""
    pruned = settings.get("keep") is not None
    return {"batch": " ".join(batch), "unet_calls": " ".join(str(n) for n in unet_calls),
            "prune_at": settings["prune_at"] if pruned else 1.0, "keep": settings["keep"] if pruned else candidates,
            "cfg_until": 1.0 if settings.get("cfg_until") is None else settings["cfg_until"]}


def read_provenance(row: dict) -> dict:
    """The inverse of :func:`row_provenance` for a row of any format: lists, and None for a speed-up that is off."""
    out = {}
    for key in ("batch", "unet_calls"):
        value = row.get(key)
        if isinstance(value, str):
            value = [v if key == "batch" else int(v) for v in value.split()]
        out[key] = value or []
    prune_at, cfg_until = row.get("prune_at"), row.get("cfg_until")
    off = prune_at is None or prune_at >= 1.0
    out.update(prune_at=None if off else prune_at, keep=None if off else row.get("keep"),
               cfg_until=None if cfg_until is None or cfg_until >= 1.0 else cfg_until)
    return out


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
