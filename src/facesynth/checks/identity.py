"""Identity checked in the loop: an embedder that says how alike two faces are, and each set member's cosine to
its reference.

The embedder is one of:

- ``clip``: the reranking CLIP's image tower (the default, at no cost: every candidate's CLIP embedding is
  computed anyway). CLIP sees style and scene as much as a face, so it is weak evidence of identity, and the
  card says so;
- a transformers image model (a local folder or a Hub id pinned to its commit): its pooled output, on the
  stored pixels resized as its ``preprocessor_config.json`` says (safetensors only, never its own code);
- an ONNX model (a local ``.onnx`` file pinned by sha256, run with onnxruntime), such as an ArcFace export:
  one NCHW float input of 3 channels at the size it declares, pixels scaled to [-1, 1] (ArcFace's convention),
  its first output the embedding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError, first_line
from ..recipe.identities import CLIP_EMBEDDER

logger = logging.getLogger(__name__)

ONNX_EXTRA = "pip install 'facesynth[identity]'"
BATCH = 64


@dataclass
class Embedder:
    """One identity embedder, loaded; :meth:`embed` gives unit-norm embeddings of stored pixels."""

    name: str
    kind: str  # clip | transformers | onnx
    commit: str | None = None
    sha256: str | None = None
    run: Any = None  # (N, 3, H, W) float in [0, 1] on the device -> (N, D) embeddings
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def embed(self, pixels: np.ndarray, clip: np.ndarray) -> np.ndarray:
        """Embeddings (N, D) of images (N, H, W, 3) uint8; ``clip``, their CLIP embeddings, serve the default."""
        if self.kind == "clip":
            return np.asarray(clip, dtype=np.float32)
        out = []
        for start in range(0, len(pixels), BATCH):
            x = torch.from_numpy(np.ascontiguousarray(pixels[start:start + BATCH])).permute(0, 3, 1, 2)
            with torch.inference_mode():
                emb = self.run(x.to(self.device).float() / 255)
            out.append(F.normalize(emb.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def record(self) -> dict[str, Any]:
        from ..folder.pins import local_record

        path = local_record(self.name) if self.kind != "clip" else {}
        return {"name": Path(path["path"]).name if path else self.name, "kind": self.kind, "commit": self.commit,
                "sha256": self.sha256, **path}


def load_embedder(name: str, revision: str | None, device: torch.device, where: str = "identities.embedder",
                  dtype: torch.dtype = torch.float32) -> Embedder:
    """``clip``, an ``.onnx`` file, or a transformers image model (folder or Hub id); one line when it is not an
    image model, holds pickled weights only, or needs its own code."""
    if name == CLIP_EMBEDDER:
        return Embedder(CLIP_EMBEDDER, "clip", device=device)
    if name.lower().endswith(".onnx"):
        return _onnx(name, where, device)
    return _transformers(name, revision, where, device, dtype)


def _onnx(name: str, where: str, device: torch.device) -> Embedder:
    from ..folder.pins import local_path, pin

    path = local_path(name, where, folder=False)
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(f"{where}: an ONNX embedder needs onnxruntime, which is not installed; {ONNX_EXTRA}") from None
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in onnxruntime.get_available_providers() and (device.type == "cuda" or p.startswith("CPU"))]
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: one line
        raise ModelError(f"{where}: '{name}' is not an ONNX model onnxruntime can run ({first_line(exc)})") from None
    inputs = session.get_inputs()
    shape = inputs[0].shape if inputs else []
    if len(inputs) != 1 or len(shape) != 4 or shape[1] != 3 or not all(isinstance(s, int) for s in shape[2:]):
        raise ModelError(f"{where}: '{name}' is not an image model (its input is {shape or 'none'}; an embedder "
                         "takes one N x 3 x H x W image batch of a fixed size)")
    size = (int(shape[2]), int(shape[3]))
    input_name = inputs[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False) * 2 - 1
        return torch.from_numpy(session.run(None, {input_name: x.cpu().numpy().astype(np.float32)})[0])

    return Embedder(path.name, "onnx", sha256=pin(path)["sha256"], run=run, device=device)


def _transformers(name: str, revision: str | None, where: str, device: torch.device, dtype) -> Embedder:
    from .preprocess import Preprocess
    from .verifiers import _fetch, _read_config

    folder, commit = _fetch(name, revision, where)
    config = _read_config(folder, name, where)
    image = "vision" in str(config.get("model_type", "")) or any(k in config for k in ("image_size", "num_channels"))
    if not image or not (folder / "preprocessor_config.json").is_file():
        raise ModelError(f"{where}: '{name}' is not an image model (no image size in its config.json, or no "
                         "preprocessor_config.json); give an image feature model, an .onnx file or clip")
    if not any(folder.glob("*.safetensors")):
        raise ModelError(f"{where}: '{name}' has no safetensors weights; facesynth loads no pickled weights")
    from transformers import AutoModel

    from ..folder.files import load_json

    try:
        model = AutoModel.from_pretrained(folder, use_safetensors=True, local_files_only=True, trust_remote_code=False,
                                          dtype=dtype).to(device).eval()
        preprocess = Preprocess.of(load_json(folder / "preprocessor_config.json"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{where}: cannot load '{name}' ({first_line(exc)})") from None

    def run(x: torch.Tensor) -> torch.Tensor:
        batch = torch.stack([preprocess(image) for image in x]).to(dtype)
        out = model(pixel_values=batch)
        for key in ("image_embeds", "pooler_output"):
            value = getattr(out, key, None)
            if value is not None:
                return value
        return out.last_hidden_state[:, 0]

    try:
        run(torch.zeros(1, 3, *preprocess.shape, device=device))
    except Exception as exc:  # noqa: BLE001 - a model that does not take an image: one line
        raise ModelError(f"{where}: '{name}' does not take an image ({first_line(exc)})") from None
    return Embedder(Path(name).name if commit is None else name, "transformers", commit=commit, run=run,
                    device=device)


def similarities(embeddings: np.ndarray, refs: list[int]) -> np.ndarray:
    """Each row's cosine to its reference row (unit-norm rows: a dot product)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    return (emb * emb[np.asarray(refs)]).sum(axis=1)
