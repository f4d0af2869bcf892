"""CLIP scoring: rerank candidates and check labels, on the device, from tensors.

``clip_score = max(100 * cos(image, text), 0)``, as torchmetrics defines CLIPScore.
Images come straight from the pipeline as float tensors in [0, 1]; they are resized
(bicubic, antialiased), centre-cropped and normalised on the device, so no PNG or
PIL round trip happens before scoring.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ModelError, first_line

logger = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
TEXT_CACHE = 4096  # label texts and captions repeat; prompts (--rerank prompt) do not


@dataclass
class ClipInfo:
    """What the manifest records about the CLIP model."""

    name: str
    commit: str | None = None


class ClipScorer:
    """Scores images against texts with a transformers CLIPModel."""

    def __init__(self, model, tokenizer, preprocess: dict, info: ClipInfo,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval()
        self.tokenizer = tokenizer
        self.size = int(preprocess["size"])
        self.crop = int(preprocess["crop"])
        self.mean = torch.tensor(preprocess["mean"], device=self.device, dtype=dtype).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess["std"], device=self.device, dtype=dtype).view(1, 3, 1, 1)
        self.info = info
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # bounded: TEXT_CACHE entries

    @classmethod
    def load(cls, name: str = DEFAULT_CLIP, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, revision: str | None = None,
             option: str = "--clip-model") -> "ClipScorer":
        """Load ``tiny``, a Hub id or a local folder (safetensors weights only); errors name ``option``."""
        if name == "tiny":
            from .. import tiny

            model, tokenizer, preprocess = tiny.build_clip()
            return cls(model, tokenizer, preprocess, ClipInfo("tiny"), device, dtype)
        from pathlib import Path

        from huggingface_hub import snapshot_download
        from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

        try:
            if Path(name).is_dir():
                folder, commit = Path(name), None
            else:  # resolve the commit once and load from that snapshot, so the manifest can pin it
                from huggingface_hub import constants

                folder = Path(snapshot_download(name, revision=revision, local_files_only=constants.HF_HUB_OFFLINE,
                                                allow_patterns=["*.json", "*.txt", "*.safetensors"]))
                commit = folder.name
            local = {"local_files_only": True}  # the folder holds everything: nothing more to look up
            model = CLIPModel.from_pretrained(folder, use_safetensors=True, dtype=dtype, **local)
            tokenizer = AutoTokenizer.from_pretrained(folder, **local)
            proc = CLIPImageProcessorPil.from_pretrained(folder, **local)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"{option}: cannot load '{name}' ({first_line(exc)}); "
                "use tiny or a local folder with safetensors weights"
            ) from exc
        size = proc.size.get("shortest_edge") or min(proc.size.values())
        crop = proc.crop_size.get("height") if proc.crop_size else size
        preprocess = {"size": size, "crop": crop, "mean": proc.image_mean, "std": proc.image_std}
        return cls(model, tokenizer, preprocess, ClipInfo(name, commit), device, dtype)

    # Embeddings -------------------------------------------------------------------------
    def _resized(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] resized (shorter side to ``size``) and centre-cropped, in fp32."""
        x = images.to(self.device, torch.float32)  # resized in fp32: CPU kernels lack bf16 antialiasing
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        new = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
        if new != (h, w):
            x = F.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (new[0] - self.crop) // 2, (new[1] - self.crop) // 2
        return x[..., top: top + self.crop, left: left + self.crop]

    @torch.inference_mode()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings of images shaped (B, 3, H, W) with values in [0, 1]."""
        return self._embed(self._resized(images))

    @torch.inference_mode()
    def pil_embeddings(self, images: Sequence) -> torch.Tensor:
        """Unit-norm embeddings of PIL images of any sizes and modes (each resized as above, then one batch)."""
        import numpy as np

        return self.embeddings_of([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255)
                                   .permute(2, 0, 1) for im in images])

    @torch.inference_mode()
    def embeddings_of(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Unit-norm embeddings of images (3, H, W) in [0, 1] of any sizes (each resized, then one batch)."""
        return self._embed(torch.cat([self._resized(t[None]) for t in images]))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x - self.mean.float()) / self.std.float()).to(self.dtype)
        emb = self.model.get_image_features(pixel_values=x).pooler_output
        return F.normalize(emb.float(), dim=-1)

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings of texts (truncated to CLIP's 77 tokens).

        Each text is encoded alone and cached, so its embedding never depends on which
        texts came before it: a resumed run scores exactly like an uninterrupted one.
        """
        for text in dict.fromkeys(texts):
            if text not in self._text_cache:
                tokens = self.tokenizer([text], padding="max_length", truncation=True,
                                        max_length=self.tokenizer.model_max_length, return_tensors="pt")
                emb = self.model.get_text_features(
                    input_ids=tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device)
                ).pooler_output
                self._text_cache[text] = F.normalize(emb.float(), dim=-1)[0]
                if len(self._text_cache) > TEXT_CACHE:
                    self._text_cache.popitem(last=False)
            else:
                self._text_cache.move_to_end(text)
        return torch.stack([self._text_cache[t] for t in texts])

    # Scores -----------------------------------------------------------------------------
    @staticmethod
    def similarity(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Row-wise ``100 * cos`` of matching image and text embeddings (what candidates are ranked by)."""
        return 100 * (image_emb * text_emb).sum(-1)

    @staticmethod
    def clip_score(similarity: torch.Tensor) -> torch.Tensor:
        """torchmetrics' CLIPScore: ``max(100 * cos, 0)``."""
        return similarity.clamp(min=0)

    def label_probabilities(self, image_emb: torch.Tensor, label_texts: Sequence[str]) -> torch.Tensor:
        """Zero-shot probabilities (B, len(label_texts)) with CLIP's learned temperature."""
        text = self.text_embeddings(label_texts)
        logit_scale = self.model.logit_scale.exp().float()
        return (logit_scale * image_emb @ text.T).softmax(dim=-1)

