"""The ``reference`` set mechanism: an IP-Adapter conditions every member of a set on its reference's image.

A call of sets runs twice: first the references (member 0 of each set, every candidate), as they would be alone
(the adapter's scale at 0); then every other member from the same starting noise, with the adapter's image
embedding of its reference's same candidate (at ``adapter_scale``). The adapter is a folder or Hub repo holding
one IP-Adapter weights file (safetensors: ``image_proj.*`` and ``ip_adapter.*`` tensors, as diffusers reads them)
and its CLIP image encoder in ``image_encoder/`` (safetensors too); it is loaded with diffusers'
``load_ip_adapter``, pinned by content (a local folder) or by commit (a Hub repo), and never runs pickled weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ModelError, PlanError, first_line
from .quiet import quiet

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WHERE = "identities.adapter"


def check_settings(spec, settings: dict[str, Any]) -> None:
    """Pruning and guidance truncation cut a call's rows mid-run, which the adapter's image embeddings (passed
    with the call) cannot follow: refused for this mechanism, in one line."""
    if spec is None or spec.mechanism != "reference":
        return
    for key, option in (("keep", "--prune-at/--keep"), ("cfg_until", "--cfg-until")):
        if settings.get(key) is not None:
            raise PlanError(f"{option}: not with identities.mechanism reference (the adapter's image embeddings are "
                            "given for the whole call); use shared-attention, or leave it out")


def _source(spec, commit: str | None) -> tuple[Path, str, dict[str, Any]]:
    """The adapter's folder, its weights file's name, and what the manifest records of it."""
    from ..folder.pins import local_path, looks_local

    if looks_local(spec.adapter):
        folder = local_path(spec.adapter, WHERE, folder=True)
        record: dict[str, Any] = {"name": folder.resolve().name, "path": str(folder.resolve())}
    else:
        from ..folder.snapshots import fetch

        patterns = [spec.adapter_file or "*.safetensors", "image_encoder/*.json", "image_encoder/*.safetensors"]
        folder, commit = fetch(spec.adapter, commit, WHERE, patterns)
        record = {"name": spec.adapter, "commit": commit}
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    if spec.adapter_file is not None:
        if not spec.adapter_file.lower().endswith(".safetensors"):
            raise ModelError(f"{WHERE}: only .safetensors adapters are loaded, never pickle files")
        file = spec.adapter_file
        if file not in names:
            raise ModelError(f"{WHERE}: '{spec.adapter}' has no file '{file}'")
    else:
        weights = [n for n in names if n.lower().endswith(".safetensors")]
        if len(weights) != 1:
            raise ModelError(f"{WHERE}: '{spec.adapter}' holds {len(weights)} safetensors files "
                             f"({', '.join(weights) or 'none'}); name one with adapter_file (pickle files are never "
                             "loaded)")
        file = weights[0]
    encoder = folder / "image_encoder"
    if not any(encoder.glob("*.safetensors")):
        raise ModelError(f"{WHERE}: '{spec.adapter}' has no image_encoder/ with safetensors weights")
    return folder, file, {**record, "file": file}


def load(pipe, spec, family, commit: str | None = None) -> dict[str, Any]:
    """Load the IP-Adapter into the pipeline (its image encoder first, from safetensors); what to record."""
    from transformers import CLIPVisionModelWithProjection

    if family.name not in ("sd", "sdxl"):
        raise PlanError(f"identities.mechanism: reference runs IP-Adapters, which facesynth loads for SD 1.x/2.x "
                        f"and SDXL; {family.label} model is neither")
    folder, file, record = _source(spec, commit)
    try:
        with quiet():
            encoder = CLIPVisionModelWithProjection.from_pretrained(
                folder / "image_encoder", use_safetensors=True, local_files_only=True, dtype=pipe.dtype)
            pipe.register_modules(image_encoder=encoder.to(pipe.device).eval())
            pipe.load_ip_adapter(str(folder), subfolder="", weight_name=file, image_encoder_folder=None,
                                 local_files_only=True)
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise ModelError(f"{WHERE}: '{spec.adapter}' does not fit the model ({first_line(exc)}): an adapter for "
                         "another model family?") from None
    logger.info("loaded the IP-Adapter %s (%s) at scale %s", spec.adapter, file, spec.adapter_scale)
    return record


@torch.inference_mode()
def image_embeds(pipe, images: torch.Tensor) -> torch.Tensor:
    """The adapter's image embeddings of images (N, 3, H, W) in [0, 1]: resized and centre-cropped to the
    encoder's size, normalised as CLIP is."""
    encoder = pipe.image_encoder
    size = int(encoder.config.image_size)
    x = images.to(encoder.device, torch.float32)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bicubic",
                      antialias=True, align_corners=False).clamp(0, 1)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return encoder(pixel_values=((x - mean) / std).to(encoder.dtype)).image_embeds


def denoise(engine, conds, seeds, settings, calls, samples, n: int):
    """Both passes of a call of sets (see the module docstring): the latents, images per UNet call and
    survivors, in the call's sample order, as :meth:`.engine.Engine.denoise` returns them."""
    order = sorted(range(len(samples)), key=lambda g: (samples[g].member != 0, g))  # references first
    refs = [g for g in order if samples[g].member == 0]
    rest = [g for g in order if samples[g].member != 0]
    forced = list(calls or [])
    cut = _split(forced, len(refs) * n)
    rows = lambda group: [r for g in group for r in range(g * n, g * n + n)]  # noqa: E731
    pipe, spec = engine.pipe, engine.recipe.identities
    pipe.set_ip_adapter_scale(0.0)
    dim = int(pipe.image_encoder.config.projection_dim)
    first = engine.denoise([conds[r] for r in rows(refs)], [seeds[r] for r in rows(refs)], settings,
                           forced[:cut] or None, [samples[g] for g in refs], ip=torch.zeros(len(refs) * n, dim))
    parts, used, kept = {g: first[0][k * n:(k + 1) * n] for k, g in enumerate(refs)}, list(first[1]), {}
    kept.update({g: first[2][k] for k, g in enumerate(refs)})
    if rest:
        embeds = image_embeds(pipe, engine.decode(first[0]))
        position = {samples[g].sample_id: k for k, g in enumerate(refs)}
        ip = torch.stack([embeds[position[samples[g].reference] * n + c] for g in rest for c in range(n)])
        pipe.set_ip_adapter_scale(spec.adapter_scale)
        second = engine.denoise([conds[r] for r in rows(rest)], [seeds[r] for r in rows(rest)], settings,
                                forced[cut:] or None, [samples[g] for g in rest], ip=ip)
        parts.update({g: second[0][k * n:(k + 1) * n] for k, g in enumerate(rest)})
        kept.update({g: second[2][k] for k, g in enumerate(rest)})
        used += second[1]
    return torch.cat([parts[g] for g in range(len(samples))]), used, [kept[g] for g in range(len(samples))]


def _split(forced: list[int], images: int) -> int:
    """How many of a reproduced call's recorded UNet calls belong to its first pass (``images`` images)."""
    total = 0
    for k, size in enumerate(forced):
        if total >= images:
            return k
        total += size
    return len(forced)
