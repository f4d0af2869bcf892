"""Confusion matrices as pictures for the card: true values down, predicted values across, counts in cells."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

CELL = 44
MARGIN = 8


def font(size: int):
    """Pillow's default font at ``size`` (the fixed bitmap font where Pillow lacks FreeType sizes)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def confusion_png(matrix: list[list[int]], values: list[str], title: str, rows: str = "true",
                  columns: str = "predicted", column_values: list[str] | None = None) -> bytes:
    """A PNG of ``matrix`` (``matrix[i][j]``: rows of value ``i`` given ``j``), each row shaded by its share.

    ``column_values`` (default ``values``) may add columns after the values', such as a verifier's ``other``.
    """
    column_values = column_values or values
    font_, small = font(14), font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = [f"{i + 1}  {v}" for i, v in enumerate(column_values)]  # columns are numbered: names share prefixes
    label_w = max([probe.textlength(v, font=font_) for v in names] + [probe.textlength(rows, font=small)])
    left, top = int(label_w) + 3 * MARGIN, 3 * MARGIN + 40
    size, across = len(values) * CELL, len(column_values) * CELL
    legend = len(column_values) > len(values)  # the extra columns' names, under the matrix
    width = max(left + across + MARGIN, int(probe.textlength(title, font=font_)) + 2 * MARGIN)
    picture = Image.new("RGB", (width, top + size + 2 * MARGIN + 20 + 20 * legend), "white")
    draw = ImageDraw.Draw(picture)
    draw.text((MARGIN, MARGIN), title, fill="black", font=font_)
    draw.text((left, MARGIN + 20), f"columns: {columns}", fill="dimgray", font=small)
    draw.text((MARGIN, top + size + MARGIN), f"rows: {rows}", fill="dimgray", font=small)
    for j in range(len(column_values)):
        draw.text((left + j * CELL + CELL // 2 - 4, top - 16), str(j + 1), fill="black", font=small)
    if legend:
        extra = ", ".join(names[len(values):])
        draw.text((MARGIN, top + size + MARGIN + 20), f"columns {extra}", fill="dimgray", font=small)
    for i, name in enumerate(names[:len(values)]):
        total = sum(matrix[i]) or 1
        draw.text((MARGIN, top + i * CELL + CELL // 2 - 8), name, fill="black", font=font_)
        for j, count in enumerate(matrix[i]):
            share = count / total
            shade = int(255 * (1 - share))
            fill = (shade, shade, 255) if i == j else (255, shade, shade)
            box = (left + j * CELL, top + i * CELL, left + (j + 1) * CELL - 1, top + (i + 1) * CELL - 1)
            draw.rectangle(box, fill=fill, outline="lightgray")
            draw.text((box[0] + 6, box[1] + CELL // 2 - 8), str(count), fill="white" if share > 0.6 else "black",
                      font=small)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()
