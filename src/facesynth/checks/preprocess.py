"""What a verifier is given: the face crop of a stored image, resized and normalised as the model's own
``preprocessor_config.json`` says (read as data: no processor class, no torchvision), every setting checked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ModelError


def crop_box(box: Sequence[int] | None, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)``: the face box padded by ``margin`` of its size each side, inside the
    image; the whole image without a box."""
    if box is None:
        return 0, 0, width, height
    x, y, w, h = (int(v) for v in box)
    dx, dy = round(margin * w), round(margin * h)
    left, top = max(0, x - dx), max(0, y - dy)
    right, bottom = min(width, x + w + dx), min(height, y + h + dy)
    if right <= left or bottom <= top:
        return 0, 0, width, height
    return left, top, right, bottom


@dataclass
class Preprocess:
    """A verifier's input: resize to ``size`` (height, width), or the shorter side to ``shortest`` then a
    centre crop of ``crop``; then normalise."""

    mean: list[float]
    std: list[float]
    size: tuple[int, int] | None = None
    shortest: int | None = None
    crop: tuple[int, int] | None = None

    @classmethod
    def of(cls, config: dict[str, Any]) -> "Preprocess":
        """From a ``preprocessor_config.json`` (read as data: no processor class, no torchvision needed); every
        size is a whole number of pixels above 0, and mean and std have 3 finite entries, std none 0."""
        if not isinstance(config, dict):
            raise ModelError("preprocessor_config.json: not a JSON object")
        size = config.get("size") or {}
        if _is_size(size):
            size = {"shortest_edge": size}
        if not isinstance(size, dict):
            raise ModelError(f"preprocessor_config.json: size: {size!r:.60} is not a size")
        crop = config.get("crop_size") if config.get("do_center_crop") else None
        if _is_size(crop):
            crop = {"height": crop, "width": crop}
        normalise = config.get("do_normalize", True)
        mean = _triple(config.get("image_mean"), "image_mean", 0.5) if normalise else [0.0] * 3
        std = _triple(config.get("image_std"), "image_std", 0.5) if normalise else [1.0] * 3
        if any(v == 0 for v in std):
            raise ModelError(f"preprocessor_config.json: image_std: {std} holds 0 (a division by zero)")
        if "height" in size and "width" in size:
            return cls(mean, std, size=(_pixels(size, "height", "size"), _pixels(size, "width", "size")))
        if size.get("shortest_edge") is None:
            raise ModelError(f"preprocessor_config.json: size: gives no input size ({size})")
        if crop is not None and not isinstance(crop, dict):
            raise ModelError(f"preprocessor_config.json: crop_size: {crop!r:.60} is not a size")
        return cls(mean, std, shortest=_pixels(size, "shortest_edge", "size"),
                   crop=(_pixels(crop, "height", "crop_size"), _pixels(crop, "width", "crop_size")) if crop else None)

    @property
    def shape(self) -> tuple[int, int]:
        """The (height, width) the model is given for a square image."""
        if self.size is not None:
            return self.size
        return self.crop if self.crop is not None else (self.shortest, self.shortest)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """One image (3, H, W) in [0, 1] as the model's normalised (3, h, w) input, in fp32."""
        x = image[None].float()
        h, w = x.shape[-2:]
        if self.size is not None:
            new = self.size
        else:
            scale = self.shortest / min(h, w)
            new = (max(1, round(h * scale)), max(1, round(w * scale)))
        if new != (h, w):
            x = F.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        if self.crop is not None:
            ch, cw = min(self.crop[0], new[0]), min(self.crop[1], new[1])
            top, left = (new[0] - ch) // 2, (new[1] - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std)[0]


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pixels(mapping: dict[str, Any], key: str, where: str) -> int:
    value = mapping.get(key)
    if not _is_size(value) or not 0 < value <= 8192:
        raise ModelError(f"preprocessor_config.json: {where}.{key}: {value!r:.40} is not a size in pixels "
                         "(a whole number from 1 to 8192)")
    return value


def _triple(value: Any, key: str, default: float) -> list[float]:
    import math

    if value is None:
        return [default] * 3
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise ModelError(f"preprocessor_config.json: {key}: {value!r:.60} is not 3 finite numbers (one per RGB "
                         "channel)")
    return [float(v) for v in value]


