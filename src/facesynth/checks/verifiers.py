"""Independent verifiers: a second model's view of each row's labels.

A verifier checks one attribute. It is either an image classifier
(``AutoModelForImageClassification`` and its image processor, safetensors only,
never remote code) whose class names map to the attribute's values, or a
zero-shot CLIP-family model other than the reranker, scoring the attribute's
``label_prompt`` over its values. Either way it gives, per image, a probability
for every value plus ``other`` (the classes that map to no value); its verdict is
the most probable of those.

Verifiers see the stored pixels (uint8, as the PNG holds them), cropped to the face
box padded by a margin when one is known, resized to the verifier's own input size
on the device. So anyone can check a row again from its image and ``face_box``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelError, PlanError, first_line
from .preprocess import Preprocess, crop_box
from ..recipe import Recipe, Verify

logger = logging.getLogger(__name__)

OTHER = "other"
MODES = ("gate", "record")
ZERO_SHOT = "zero-shot:"
BATCH = 64  # images per verifier forward pass


def normalise(name: str) -> str:
    """A class or value name compared loosely: case, spaces, hyphens and underscores do not count."""
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def parse_option(text: str, recipe: Recipe) -> tuple[str, Verify]:
    """``ATTR=MODEL[,CLASS=VALUE...][,min_probability=P]`` or ``ATTR=zero-shot:MODEL`` from ``--verify``."""
    from pydantic import ValidationError

    attr, sep, rest = text.partition("=")
    model, *pairs = rest.split(",")
    if not sep or not attr or not model:
        raise PlanError(f"--verify: '{text}' is not ATTRIBUTE=MODEL (or ATTRIBUTE=zero-shot:MODEL)")
    if attr not in recipe.attributes:
        raise PlanError(f"--verify: '{attr}' is not an attribute of recipe '{recipe.name}' "
                        f"({', '.join(recipe.attributes)})")
    fields: dict[str, Any] = {"zero_shot": model.removeprefix(ZERO_SHOT)} if model.startswith(ZERO_SHOT) else {
        "model": model}
    if fields.get("zero_shot") == "":
        raise PlanError(f"--verify: '{text}' names no model after 'zero-shot:' (ATTRIBUTE=zero-shot:CLIP_MODEL)")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise PlanError(f"--verify: '{pair}' in '{text}' is not CLASS=VALUE or min_probability=P")
        if key == "min_probability":
            try:
                fields[key] = float(value)
            except ValueError:
                raise PlanError(f"--verify: min_probability must be a number (got '{value}')") from None
        else:
            fields.setdefault("labels", {})[key] = value
    try:
        return attr, Verify(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise PlanError(f"--verify {attr}: {where + ': ' if where else ''}"
                        f"{err['msg'].removeprefix('Value error, ')}") from None


def specs(recipe: Recipe, options: Sequence[str] = ()) -> dict[str, Verify]:
    """The recipe's verifiers, with ``--verify`` options replacing an attribute's, in the recipe's order."""
    chosen = dict(recipe.verify)
    given: set[str] = set()
    for text in options:
        attr, spec = parse_option(text, recipe)
        if attr in given:
            raise PlanError(f"--verify: '{attr}' is given twice; give one verifier per attribute")
        given.add(attr)
        chosen[attr] = spec
    return {a: chosen[a] for a in recipe.attributes if a in chosen}


# Verifiers ----------------------------------------------------------------------------------
@dataclass
class Verifier:
    """One attribute's verifier, loaded; ``probabilities`` gives (B, values + other) per image."""

    attribute: str
    spec: Verify
    values: list[str]
    name: str
    commit: str | None
    kind: str  # "classifier" or "zero-shot"
    labels: dict[str, str] = field(default_factory=dict)  # class name -> value or "other" (classifiers)
    model: Any = None
    preprocess: Preprocess | None = None
    scorer: Any = None  # a ClipScorer (zero-shot)
    texts: list[str] = field(default_factory=list)
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @property
    def classes(self) -> list[str]:
        """The verdicts it can give: the attribute's values, then ``other``."""
        return [*self.values, OTHER]

    def record(self, mode: str, margin: float) -> dict[str, Any]:
        """What the manifest keeps about this verifier."""
        from ..folder.pins import local_record

        path = local_record(self.name)  # a folder is named by its name; its path stays local (publish drops it)
        return {"attribute": self.attribute, "kind": self.kind, "model": Path(path["path"]).name if path
                else self.name, **path,
                "commit": self.commit, "labels": self.labels, "mode": mode,
                "min_probability": self.spec.min_probability, "margin": margin,
                "claimed_accuracy": self.spec.claimed_accuracy}

    @torch.inference_mode()
    def probabilities(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        """Probabilities (B, len(values) + 1) for crops (3, H, W) in [0, 1] of any sizes, in float32."""
        parts = []
        for start in range(0, len(crops), BATCH):
            chunk = crops[start:start + BATCH]
            if self.kind == "zero-shot":
                emb = self.scorer.embeddings_of(chunk)
                probs = self.scorer.label_probabilities(emb, self.texts)
                parts.append(torch.cat([probs.float(), torch.zeros(len(chunk), 1, device=probs.device)], 1))
                continue
            x = torch.stack([self.preprocess(c.to(self.device)) for c in chunk]).to(self.dtype)
            logits = self.model(pixel_values=x).logits.float()
            parts.append(logits.softmax(-1) @ self._aggregate)
        return torch.cat(parts).cpu()

    @property
    def _aggregate(self) -> torch.Tensor:
        """(classes of the model, values + other): 1 where a class maps to a verdict."""
        matrix = getattr(self, "_matrix", None)
        if matrix is None:
            id2label = self.model.config.id2label
            matrix = torch.zeros(len(id2label), len(self.values) + 1, device=self.device)
            for i in range(len(id2label)):
                matrix[i, self.classes.index(self.labels[id2label[i]])] = 1
            self._matrix = matrix
        return matrix


def verify(verifiers: Sequence[Verifier], pixels: np.ndarray, boxes: Sequence[Sequence[int] | None],
           wanted: Sequence[dict[str, str]], margin: float) -> list[dict[str, tuple[int, float]]]:
    """Each image's ``{attribute: (verdict index, probability of the row's value)}``.

    ``pixels`` (B, H, W, 3) uint8 as stored; ``boxes`` each image's face box or None; ``wanted`` each image's
    labels. Crops of one size run as one batch.
    """
    out: list[dict[str, tuple[int, float]]] = [{} for _ in range(len(pixels))]
    if not verifiers or not len(pixels):
        return out
    height, width = pixels.shape[1:3]
    images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    crops = []
    for i, box in enumerate(boxes):
        left, top, right, bottom = crop_box(box, width, height, margin)
        crops.append(images[i, :, top:bottom, left:right].float() / 255)
    for v in verifiers:
        probs = v.probabilities(crops)
        verdicts = probs.argmax(1).tolist()  # the first maximum wins ties
        for i, labels in enumerate(wanted):
            out[i][v.attribute] = (int(verdicts[i]), float(probs[i, v.values.index(labels[v.attribute])]))
    return out


def failed(verifiers: Sequence[Verifier], result: dict[str, tuple[int, float]], labels: dict[str, str]) -> str | None:
    """The first attribute whose verifier disputes the row (another verdict, or too low a probability)."""
    for v in verifiers:
        verdict, prob = result[v.attribute]
        if v.classes[verdict] != labels[v.attribute] or prob < v.spec.min_probability:
            return v.attribute
    return None


# Loading ------------------------------------------------------------------------------------
def _fetch(name: str, revision: str | None, where: str) -> tuple[Path, str | None]:
    """A local folder as it is (a path that is not there is one line, never a Hub id), or a Hub snapshot pinned
    to its commit (json, txt and safetensors files only)."""
    from ..folder.pins import local_path, looks_local

    if looks_local(name):
        return local_path(name, where, folder=True), None
    from ..folder.snapshots import fetch

    return fetch(name, revision, where, ["*.json", "*.txt", "*.safetensors"])


def class_map(attribute: str, values: list[str], captions: dict[str, str], id2label: dict[int, str],
              given: dict[str, str], where: str, model: str = "MODEL") -> dict[str, str]:
    """Every class name of the model -> a value (given, or matched by name) or ``other``."""
    names = [id2label[i] for i in range(len(id2label))]
    loose = {normalise(n): n for n in names}
    out = {}
    for cls, value in given.items():
        match = cls if cls in names else loose.get(normalise(cls))
        if match is None:
            raise ModelError(f"{where}: labels: the model has no class '{cls}' ({', '.join(names)})")
        if value not in values and value != OTHER:
            raise ModelError(f"{where}: labels: '{value}' is not a value of {attribute} ({', '.join(values)})")
        out[match] = value
    by_name = {normalise(k): v for v in values for k in (v, captions[v])}
    for cls in names:
        out.setdefault(cls, by_name.get(normalise(cls), OTHER))
    missing = [v for v in values if v not in out.values()]
    if missing:
        hint = (f"map one with --verify {attribute}={model},CLASS={missing[0]}" if where.startswith("--verify")
                else f"map one with --map CLASS={missing[0]}" if where == "--model"
                else f"map one with labels: {{CLASS: {missing[0]}}}")
        raise ModelError(f"{where}: no class of the model maps to {', '.join(repr(v) for v in missing)} "
                         f"(classes: {', '.join(names)}); {hint}")
    return {cls: out[cls] for cls in names}


def _read_config(folder: Path, name: str, where: str) -> dict[str, Any]:
    from ..folder.files import load_json

    try:
        config = load_json(folder / "config.json")
    except (OSError, ValueError, UnicodeDecodeError):
        raise ModelError(f"{where}: '{name}' has no readable config.json; it is not a transformers model") from None
    if not isinstance(config, dict):
        raise ModelError(f"{where}: '{name}': config.json is not a JSON object")
    if config.get("auto_map"):
        raise ModelError(f"{where}: '{name}' needs its own code (config.json has auto_map); facesynth never runs "
                         "a model's own code (trust_remote_code)")
    return config


def _check_classifier(config: dict[str, Any], folder: Path, name: str, where: str) -> None:
    """An image classifier transformers knows, with safetensors weights; one line naming what it is otherwise."""
    import transformers

    arch = config.get("architectures") or []
    if not isinstance(arch, list) or not arch or not all(isinstance(a, str) and a.endswith("ForImageClassification")
                                                         for a in arch):
        shown = ", ".join(map(str, arch)) if isinstance(arch, list) else str(arch)
        raise ModelError(f"{where}: '{name}' is not an image classifier (architectures: {shown or 'none'}); give an "
                         "image-classification model or zero_shot: a CLIP")
    unknown = [a for a in arch if not hasattr(transformers, a)]
    if unknown:
        raise ModelError(f"{where}: '{name}' is a {unknown[0]}, which transformers does not ship (a model with its "
                         "own code?); facesynth never runs a model's own code")
    if not any(folder.glob("*.safetensors")):
        raise ModelError(f"{where}: '{name}' has no safetensors weights; facesynth loads no pickled "
                         "weights (convert it with `safetensors`' convert script)")


def _probe(model, preprocess: Preprocess, name: str, where: str, device, dtype) -> None:
    """One forward pass on a blank image at the processor's size: a processor that does not fit the model is one
    line now, before any image is made."""
    try:
        with torch.inference_mode():
            x = preprocess(torch.zeros(3, *preprocess.shape, device=device))[None].to(dtype)
            logits = model(pixel_values=x).logits
    except Exception as exc:  # noqa: BLE001 - a processor that does not fit the model: one line
        raise ModelError(f"{where}: '{name}': its preprocessor_config.json does not fit the model "
                         f"({first_line(exc)})") from None
    if logits.shape[-1] != len(model.config.id2label):
        raise ModelError(f"{where}: '{name}' gives {logits.shape[-1]} scores for {len(model.config.id2label)} "
                         "classes in its config.json")


def load_verifier(attribute: str, spec: Verify, recipe: Recipe, reranker: str, device: torch.device,
                  dtype: torch.dtype, commit: str | None = None, where: str | None = None) -> Verifier:
    """Load one verifier (``commit`` pins a Hub model, as a resumed run or ``reproduce`` does)."""
    from ..folder.pins import looks_local, same_source

    where = where or f"verify.{attribute}"
    attr = recipe.attributes[attribute]
    values = list(attr.values)
    if spec.zero_shot is not None:
        from .scoring import ClipScorer

        if not spec.zero_shot.strip():
            raise ModelError(f"{where}: zero_shot: names no model")
        if same_source(spec.zero_shot, reranker):
            raise ModelError(f"{where}: the zero-shot verifier must be another model than the reranking CLIP "
                             f"('{reranker}'), or it only repeats its own choice")
        if looks_local(spec.zero_shot):
            folder, _ = _fetch(spec.zero_shot, None, where)
            arch = _read_config(folder, spec.zero_shot, where).get("architectures") or []
            if isinstance(arch, list) and arch and not any("CLIP" in str(a) or "Siglip" in str(a) for a in arch):
                raise ModelError(f"{where}: '{spec.zero_shot}' is not a CLIP-family model (architectures: "
                                 f"{', '.join(map(str, arch))}); zero-shot needs one; give a classifier as "
                                 f"{attribute}=MODEL instead")
        scorer = ClipScorer.load(spec.zero_shot, device=device, dtype=dtype, revision=commit or spec.revision,
                                 option=where)
        texts = [attr.label_prompt.format(attr.caption(v)) for v in values]
        return Verifier(attribute, spec, values, spec.zero_shot, scorer.info.commit, "zero-shot", scorer=scorer,
                        texts=texts, device=device, dtype=dtype)
    folder, pinned = _fetch(spec.model, commit or spec.revision, where)
    config = _read_config(folder, spec.model, where)
    _check_classifier(config, folder, spec.model, where)
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a small model loads in a moment; the run's own bar is what counts
    try:
        model = AutoModelForImageClassification.from_pretrained(folder, use_safetensors=True, local_files_only=True,
                                                                trust_remote_code=False, dtype=dtype)
        from ..folder.files import load_json

        processor = load_json(folder / "preprocessor_config.json")
    except (OSError, ValueError) as exc:
        raise ModelError(f"{where}: cannot load '{spec.model}' ({first_line(exc)}); it needs its weights and "
                         "preprocessor_config.json") from None
    finally:
        hf_logging.enable_progress_bar()
    try:
        preprocess = Preprocess.of(processor)
    except ModelError as exc:
        raise ModelError(f"{where}: '{spec.model}': {exc}") from None
    model = model.to(device).eval()
    _probe(model, preprocess, spec.model, where, device, dtype)
    captions = {v: attr.caption(v) for v in values}
    labels = class_map(attribute, values, captions, model.config.id2label, spec.labels, where, spec.model)
    return Verifier(attribute, spec, values, spec.model, pinned, "classifier", labels, model, preprocess,
                    device=device, dtype=dtype)


def from_manifest(manifest, recipe: Recipe, device, dtype) -> list[Verifier]:
    """The verifiers a folder was made with (none without ``verify``): a Hub model at the commit its manifest
    recorded, a local folder where it was, checked to hold the same files (:mod:`facesynth.pins`)."""
    from ..folder.pins import check_pin, local_path

    params = manifest.get("parameters") or {}
    records = {r["attribute"]: r for r in manifest.get("verifiers") or []}
    inputs = params.get("inputs") or {}
    chosen = {}
    for a, data in (params.get("verify") or {}).items():
        spec = Verify.model_validate(data)
        record = records.get(a) or {}
        if record.get("path"):
            where = f"manifest.json: verifiers ({a})"
            path = local_path(record["path"], where, folder=True)
            check_pin(path, inputs.get(f"verify.{a}"), where)
            spec = spec.model_copy(update={"zero_shot" if spec.zero_shot is not None else "model": str(path)})
        chosen[a] = spec
    if not chosen:
        return []
    clip = manifest.get("clip_model") or {}
    return load_verifiers(chosen, recipe, clip.get("path") or clip.get("name") or params["clip_model"], device,
                          dtype, list(records.values()))


def _where(name: str) -> str:
    from ..folder.pins import looks_local

    return str(Path(name).expanduser().resolve()) if looks_local(name) else name


def load_verifiers(chosen: dict[str, Verify], recipe: Recipe, reranker: str, device, dtype,
                   recorded: Sequence[dict[str, Any]] = (), origins: dict[str, str] | None = None) -> list[Verifier]:
    """Every chosen verifier, once; a verifier the manifest recorded is loaded at its recorded commit.
    ``origins`` names where each was given, for error lines (default ``verify.ATTR``)."""
    pins = {(r["attribute"], r.get("path") or r["model"]): r.get("commit") for r in recorded}
    return [load_verifier(a, spec, recipe, reranker, torch.device(device), dtype,
                          pins.get((a, _where(spec.model or spec.zero_shot))), (origins or {}).get(a))
            for a, spec in chosen.items()]
