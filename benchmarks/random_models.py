"""Real-size models with random weights, built from the configs in ``benchmarks/configs``: nothing is downloaded.

Each ``configs/<name>/pipeline.json`` names a diffusers pipeline, the recipe and settings its benchmark uses,
and one entry per component: ``[class, config file]`` for a model or scheduler, ``["clip"]`` or ``["t5"]`` for a
tokenizer built locally (facesynth's tiny tokenizers: fewer, shorter tokens, but every encoder pads to its
full length, so the compute is the real model's), or a plain value. The weights are random, so the images
are noise; the layers, sizes and sequence lengths, and so the time and memory, are those of the real model.

    python benchmarks/random_models.py             # parameters per component of every config (meta device)
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

CONFIGS = Path(__file__).resolve().parent / "configs"
NAMES = ("sd15", "sdxl", "sd35-medium", "flux-schnell")


def spec(name: str) -> dict[str, Any]:
    return json.loads((CONFIGS / name / "pipeline.json").read_text())


def _component(folder: Path, entry: Any, device: str | torch.device, dtype: torch.dtype) -> Any:
    import diffusers
    import transformers

    from facesynth.tiny import build_t5_tokenizer, build_tokenizer

    if not isinstance(entry, list):
        return entry
    kind, *rest = entry
    if kind == "clip":
        return build_tokenizer()
    if kind == "t5":
        return build_t5_tokenizer()
    config = json.loads((folder / rest[0]).read_text())
    if kind == "scheduler":
        return getattr(diffusers, config["_class_name"]).from_config(config)
    torch.manual_seed(0)
    with torch.device(device), _default_dtype(dtype):  # made where they run, in their dtype: no copy, no fp32 pass
        if hasattr(diffusers, kind):
            return getattr(diffusers, kind).from_config(config).eval()
        cls = getattr(transformers, kind)
        return cls(cls.config_class(**config)).eval()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def components(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Every component of config ``name``, built on ``device`` in ``dtype`` (``"meta"`` to count parameters)."""
    folder = CONFIGS / name
    return {key: _component(folder, entry, device, dtype) for key, entry in spec(name)["components"].items()}


def build(name: str, folder: Path, dtype: torch.dtype, device: str | torch.device = "cpu") -> str:
    """Save config ``name`` as a pipeline folder (safetensors) under ``folder``; returns its path."""
    import diffusers

    pipe = getattr(diffusers, spec(name)["pipeline"])(**components(name, device, dtype))
    path = folder / name
    pipe.save_pretrained(path, safe_serialization=True)
    del pipe
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return str(path)


def build_clip(folder: Path) -> str:
    """A random-weight CLIP ViT-B/32 reranker (the seed notebook's), saved with its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from facesynth.tiny import build_tokenizer

    config = json.loads((CONFIGS / "clip-vit-b32.json").read_text())
    pre = config.pop("preprocess")
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(**config)).save_pretrained(folder / "clip", safe_serialization=True)
    build_tokenizer().save_pretrained(folder / "clip")
    CLIPImageProcessor(size={"shortest_edge": pre["size"]}, crop_size={"height": pre["crop"], "width": pre["crop"]},
                       image_mean=pre["mean"], image_std=pre["std"]).save_pretrained(folder / "clip")
    return str(folder / "clip")


def parameters(name: str) -> dict[str, int]:
    """Parameters per model component of config ``name``, counted on the meta device (no memory, no time)."""
    return {key: sum(p.numel() for p in value.parameters())
            for key, value in components(name, "meta").items() if isinstance(value, torch.nn.Module)}


def main() -> None:
    for name in NAMES:
        counts = parameters(name)
        print(f"{name} ({spec(name)['pipeline']}): " + ", ".join(f"{k} {v / 1e6:,.1f} M" for k, v in counts.items())
              + f"; total {sum(counts.values()) / 1e9:.2f} B")


if __name__ == "__main__":
    main()
