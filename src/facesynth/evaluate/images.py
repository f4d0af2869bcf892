"""Images from outside facesynth (real photos for ``evaluate --real``), opened with memory bounded by pixels.

An image is opened lazily, so its size is known before it is decoded: one over :data:`MAX_PIXELS` (Pillow's
own decompression-bomb limit) is refused by name without being decoded. Any other is decoded alone (a JPEG
already reduced by Pillow's ``draft``) and reduced by a whole factor (``Image.reduce``, a box filter) until
its shorter side is at most :data:`REDUCED_SIDE`, far above what CLIP looks at, so at most one full-size
image is in memory at a time. An empty, truncated or non-image file is :class:`BadImage`, with its name.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import first_line, shorten

MAX_PIXELS = 178_956_970  # 2 x Pillow's MAX_IMAGE_PIXELS: what Pillow itself refuses as a decompression bomb
REDUCED_SIDE = 1024  # an image's shorter side, at most, once decoded (CLIP reads 224 or so)
REDUCIBLE = ("L", "LA", "RGB", "RGBA", "RGBX", "I", "F")


class BadImage(Exception):
    """An image that cannot be used; ``why`` in words, the message naming the image."""

    def __init__(self, name: str, why: str):
        super().__init__(f"image '{shorten(name, 100)}': {why}")
        self.name, self.why = name, why


def open_bounded(cell: dict[str, Any] | None, name: str) -> Image.Image:
    """An RGB image from a ``datasets`` image cell (``{"bytes", "path"}``), decoded alone and reduced."""
    data, path = (cell or {}).get("bytes"), (cell or {}).get("path")
    if data is None and path is None:
        raise BadImage(name, "no image (null)")
    if data is not None and len(data) == 0 or data is None and Path(path).is_file() and Path(path).stat().st_size == 0:
        raise BadImage(name, "an empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below says it in one line
            image = Image.open(io.BytesIO(data) if data is not None else path)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise BadImage(name, f"{width}x{height} is {width * height / 1e6:.0f} M pixels, over the "
                                     f"{MAX_PIXELS / 1e6:.0f} M-pixel limit (a decompression bomb?)")
            factor = min(width, height) // REDUCED_SIDE
            if factor >= 2:
                image.draft("RGB", (width // factor, height // factor))  # JPEG: decoded reduced; others: no-op
            image.load()
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage(name, f"over the {MAX_PIXELS / 1e6:.0f} M-pixel limit (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise BadImage(name, "not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or damaged data
        raise BadImage(name, f"truncated or damaged ({shorten(first_line(exc), 80)})") from None
    if image.mode not in REDUCIBLE:
        image = image.convert("RGB")
    factor = min(image.size) // REDUCED_SIDE
    if factor >= 2:
        image = image.reduce(factor)
    return image if image.mode == "RGB" else image.convert("RGB")
