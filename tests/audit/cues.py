"""A dataset whose images carry a visible cue per gender and per emotion, and tiny classifiers trained to read
them, for the audit's tests and its benchmark.

The dataset is made by the tiny preset as gender pairs (identity sets that vary gender alone), then each image is
painted: a band along the bottom says the emotion (red: happy, blue: sad), a square in the top-left corner says the
gender (white: male, black: female). The shards are rewritten and the manifest's sizes and digests updated, so the
folder stays a finished dataset. A classifier trained where the label follows the band learns the band; one trained
where every woman is labelled sad leans on the square.
"""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

RECIPE = textwrap.dedent("""\
    name: cues
    primary: emotion
    attributes:
      emotion:
        label_prompt: "a photo of a {} face"
        values:
          happy: [smiling]
          sad: [frowning]
      gender:
        values:
          male: [man]
          female: [woman]
      age:
        values:
          young: [young]
          old: [old]
    template: "portrait photo of a {age} {gender}, {emotion}"
    balance:
      cross: [emotion, gender, age]
    splits: {train: 0.5, test: 0.5}
    identities:
      vary: [gender]
""")
BAND = {0: (220, 40, 40), 1: (40, 40, 220)}  # emotion index -> colour
SQUARE = {0: 255, 1: 0}  # gender index -> grey level


def paint(pixels: np.ndarray, emotion: int, gender: int) -> np.ndarray:
    """The cues on an (H, W, 3) uint8 image: a band for the emotion, a corner square for the gender."""
    out = pixels.copy()
    h, w = out.shape[:2]
    out[h - h // 4:, :] = BAND[emotion]
    out[: h // 4, : w // 4] = SQUARE[gender]
    return out


def make(folder: Path, samples: int = 48) -> Path:
    """The cue dataset in ``folder/cues`` (the tiny preset, best-of-1), painted."""
    from facesynth.generation import GenerateConfig, generate

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cues.yaml").write_text(RECIPE)
    out = folder / "cues"
    generate(GenerateConfig(recipe=str(folder / "cues.yaml"), out=out, num_samples=samples, model="tiny", quiet=True,
                            candidates=1))
    manifest = json.loads((out / "manifest.json").read_text())
    for name, record in manifest["shards"].items():
        record.update(rewrite(out / name, _painted))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out


def _painted(table: pa.Table) -> pa.Table:
    cells = []
    for cell, emotion, gender in zip(table["image"].to_pylist(), table["emotion"].to_pylist(),
                                     table["gender"].to_pylist()):
        pixels = paint(np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB")), emotion, gender)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": cell["path"]})
    k = table.schema.get_field_index("image")
    return table.set_column(k, table.schema.field(k), pa.array(cells, type=table.schema.field(k).type))


def rewrite(path: Path, change) -> dict:
    """Rewrite a shard row group by row group through ``change``; its new size and sha256 for the manifest."""
    import hashlib

    source = pq.ParquetFile(path)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, source.schema_arrow) as writer:
        for g in range(source.num_row_groups):
            writer.write_table(change(source.read_row_group(g)))
    tmp.replace(path)
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def replicate(root: Path, out: Path, rows: int, shard_rows: int = 1000) -> Path:
    """A dataset of ``rows`` test rows made of copies of ``root``'s test rows (each copy its own identities and
    sample ids), in shards of ``shard_rows`` with the source's row groups: the audit's memory check at any size."""
    import shutil

    manifest = json.loads((root / "manifest.json").read_text())
    tests = [name for name, r in sorted(manifest["shards"].items()) if r["split"] == "test"]
    groups = [pq.ParquetFile(root / n).read_row_group(g) for n in tests
              for g in range(pq.ParquetFile(root / n).num_row_groups)]
    shutil.copytree(root, out, ignore=shutil.ignore_patterns("*.parquet"))
    shards, copy, made, k = {}, 0, 0, 0
    template = manifest["shards"][tests[0]]
    while made < rows:
        name = f"data/test-{k:05d}.parquet"
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(out / name, groups[0].schema) as writer:
            count = 0
            while count < shard_rows and made < rows:
                table = groups[copy % len(groups)].slice(0, min(groups[copy % len(groups)].num_rows, rows - made))
                suffix = f"-{copy // len(groups)}"
                for column in ("sample_id", "identity", "reference"):
                    i = table.schema.get_field_index(column)
                    table = table.set_column(i, table.schema.field(i),
                                             pa.array([v + suffix for v in table[column].to_pylist()]))
                writer.write_table(table)
                count, made, copy = count + table.num_rows, made + table.num_rows, copy + 1
        data = (out / name).read_bytes()
        import hashlib
        shards[name] = {**template, "rows": count, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                        "row_groups": pq.ParquetFile(out / name).num_row_groups}
        k += 1
    manifest["shards"] = shards
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out


def classifier(path: Path, biased: bool, classes=("happy", "sad"), steps: int = 150, seed: int = 0) -> Path:
    """A tiny ViT image classifier trained on noise images with the cues (safetensors, with its processor).

    Unbiased: the label is the band's emotion. Biased: every image with the female square is labelled sad, so
    the square decides for women and the band only for men."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, id2label=dict(enumerate(classes)),
                       label2id={c: i for i, c in enumerate(classes)})
    model = ViTForImageClassification(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        emotion, gender = rng.integers(0, 2, 64), rng.integers(0, 2, 64)
        images = np.stack([paint(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), e, g)
                           for e, g in zip(emotion, gender)])
        labels = np.where(gender == 1, 1, emotion) if biased else emotion
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, torch.from_numpy(labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval().save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return path
