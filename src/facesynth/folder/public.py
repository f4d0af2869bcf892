"""What of a folder is published: the manifest and the recipe with every local path made a name (a model
folder or file, the recipe file, the CLIP and verifier folders, adapters), so no path on this machine leaves it."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from .writer import Manifest


def public_manifest(manifest: Manifest) -> dict[str, Any]:
    """The manifest as published: local paths (model folder or file, recipe file, CLIP folder, verifier
    folders) become names."""
    data = copy.deepcopy(manifest.data)
    for key in ("model", "clip_model"):
        record = data.get(key) or {}
        record.pop("path", None)
        if record.get("config"):
            record["config"] = Path(record["config"]).name
        if record.get("kind") in ("folder", "file") or (record.get("name") and os.path.isabs(record["name"])):
            record["name"] = Path(record["name"]).name
    params = data.get("parameters") or {}
    for key in ("model", "clip_model"):
        if isinstance(params.get(key), str) and (os.sep in params[key] or params[key].endswith(".safetensors")):
            params[key] = Path(params[key]).name
    for record in [*(data.get("verifiers") or []), *(data.get("loras") or []), data.get("identity_adapter") or {},
                   data.get("identity_embedder") or {}]:
        record.pop("path", None)
    for spec in (params.get("verify") or {}).values():
        for key in ("model", "zero_shot"):
            if isinstance(spec.get(key), str) and os.sep in spec[key]:
                spec[key] = Path(spec[key]).name
    if isinstance(data.get("recipe"), dict) and data["recipe"].get("source"):
        data["recipe"]["source"] = Path(data["recipe"]["source"]).name
    if isinstance(data.get("recipe"), dict) and isinstance(data["recipe"].get("yaml"), str):
        data["recipe"]["yaml"] = public_recipe(data["recipe"]["yaml"])
    return data


def _recipe_paths(data: Any) -> list[str]:
    """The model sources a recipe names that are local paths: its model, verifiers and adapters."""
    from .pins import looks_local

    if not isinstance(data, dict):
        return []
    names = [data.get("model")]
    for spec in (data.get("verify") or {}).values() if isinstance(data.get("verify"), dict) else []:
        if isinstance(spec, dict):
            names += [spec.get("model"), spec.get("zero_shot")]
    for lora in data.get("loras") or [] if isinstance(data.get("loras"), list) else []:
        names.append(lora.get("source") if isinstance(lora, dict) else str(lora).rpartition("@")[0] or lora)
    return [n for n in names if isinstance(n, str) and n and looks_local(n)]


def public_recipe(text: str) -> str:
    """The recipe as published: every local path it names as a model, verifier or adapter (absolute, or climbing
    out with ``..``) becomes its file or folder name, the rest of the text (comments included) as written."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # a recipe that loaded once always parses; nothing to rewrite otherwise
    paths = _recipe_paths(data)
    for path in sorted(set(paths), key=len, reverse=True):
        text = text.replace(path, Path(path.rstrip("/\\")).name or "model")
    try:
        left = _recipe_paths(yaml.safe_load(text))
    except yaml.YAMLError:
        left = paths
    if left:  # a path written in a form the text does not hold verbatim (escapes): the recipe as data instead
        for path in left:
            data = _renamed(data, path, Path(path.rstrip("/\\")).name or "model")
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return text


def _renamed(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _renamed(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, old, new) for v in value]
    return value.replace(old, new) if isinstance(value, str) else value
