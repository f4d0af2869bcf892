"""The dataset card: README.md YAML (configs, dataset_info) and body, built from the data itself.

Counts, split sizes and score statistics are read from the shards (label columns
only, one row group at a time), never typed by hand. A sample grid with one row
per primary label is written to ``assets/samples.png`` and shown in the card.
"""

from __future__ import annotations

import copy
import io
import logging
import heapq
from collections import Counter, defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image, ImageDraw

from ..folder.reading import read_manifest, shard_paths
from .summary import Summary, split_balance, split_search, summarize
from .confusion import font as picture_font
from ..errors import OutputError
from .escape import Markup, environment
from .audit import for_card as audit_section
from .evaluation import for_card
from .identity import PICTURE, identity_report
from .verification import picture_name, verification, write_pictures
from ..folder.files import atomic_write
from ..folder.state import FIRST_VERSION
from ..checks.quality import REASONS, quality_report
from ..recipe import Recipe, switch_step
from ..folder.schema import features_of, verified_attributes
from ..folder.writer import Manifest, sha256_file

logger = logging.getLogger(__name__)

GRID_COLUMNS = 6
GRID_CELL = 128
MAX_CARD_CELLS = 64  # beyond this the card groups the quality table by primary label
TAGS = ["synthetic", "faces", "facesynth", "stable-diffusion"]
SENSITIVE = ("gender", "ethnicity", "race", "age", "religion", "skin", "disability")  # attribute names that mark one
GATED_PROMPT = ("This dataset holds synthetic faces labelled by gender, ethnicity and other sensitive attributes. "
                "Say what you will use it for; it may not be used to identify people or to infer these attributes "
                "of real people.")


def sample_grid(root: str | Path, summary: Summary, columns: int = GRID_COLUMNS) -> Path:
    """Write ``assets/samples.png``: one row per primary label, its best-scoring images.

    Streams: one row group at a time to rank (a heap of ``columns`` per label), then
    images only from the row groups that hold a chosen row.
    """
    root = Path(root)
    recipe = summary.recipe
    values = list(recipe.attributes[recipe.primary].values)
    files = list(shard_paths(root, summary.manifest).values())
    best: dict[int, list[tuple[float, str]]] = defaultdict(list)  # label -> min-heap of (score, -id order)
    for table in _row_groups(files, ["sample_id", recipe.primary, "clip_score"]):
        for sid, label, score in zip(table["sample_id"], table[recipe.primary], table["clip_score"]):
            _keep_top(best[label], (score, _Desc(sid)), columns)
    chosen = {label: [key[1].value for key in sorted(heap, reverse=True)] for label, heap in best.items()}
    wanted = {sid for ids in chosen.values() for sid in ids}
    images = {}
    for path in files:
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):
            ids = pf.read_row_group(i, columns=["sample_id"])["sample_id"].to_pylist()
            if wanted.isdisjoint(ids):
                continue
            table = pf.read_row_group(i, columns=["sample_id", "image"]).to_pydict()
            for sid, img in zip(table["sample_id"], table["image"]):
                if sid in wanted:
                    images[sid] = Image.open(io.BytesIO(img["bytes"])).convert("RGB")
    label_w = 150
    grid = Image.new("RGB", (label_w + columns * GRID_CELL, len(values) * GRID_CELL), "white")
    draw = ImageDraw.Draw(grid)
    font = picture_font(18)
    for row, value in enumerate(values):
        draw.text((8, row * GRID_CELL + GRID_CELL // 2 - 10), value, fill="black", font=font)
        for col, sid in enumerate(chosen.get(row, [])):
            tile = images[sid].resize((GRID_CELL, GRID_CELL), Image.Resampling.LANCZOS)
            grid.paste(tile, (label_w + col * GRID_CELL, row * GRID_CELL))
    path = root / "assets" / "samples.png"
    with atomic_write(path, "wb") as f:
        grid.save(f, format="PNG")
    return path


class _Desc:
    """Orders sample ids in reverse, so that among equal scores the smallest id ranks first."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __lt__(self, other: "_Desc") -> bool:
        return self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.value == other.value


def _keep_top(heap: list, item: tuple, k: int) -> None:
    if len(heap) < k:
        heapq.heappush(heap, item)
    elif heap[0] < item:
        heapq.heapreplace(heap, item)


def _row_groups(files: list[Path], columns: list[str]):
    """Each row group of each shard as a dict of columns, one at a time."""
    for path in files:
        pf = pq.ParquetFile(path)
        for i in range(pf.num_row_groups):
            yield pf.read_row_group(i, columns=columns).to_pydict()


def train_eval_index(recipe: Recipe, summary: Summary) -> list[dict[str, Any]] | None:
    """The Hub's ``train-eval-index``: the task, its splits and which column is the label (the primary)."""
    held = [s for s in recipe.splits if summary.split_sizes.get(s)]
    evaluate = next((s for s in ("test", "validation") if s in held), None)
    if "train" not in held or evaluate is None:
        return None
    return [{"config": "default", "task": "image-classification", "task_id": "multi_class_classification",
             "splits": {"train_split": "train", "eval_split": evaluate},
             "col_mapping": {"image": "image", recipe.primary: "label"}}]


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def configs_and_infos(summary: Summary) -> tuple[list[dict], list[dict]]:
    """The README YAML: a default config over every file, plus one config per primary label over its own folder.

    Each label's shards live in ``data/<label>/``, so a per-label config is declared by ``data_files``
    alone: the Hub's viewer (which copies a config's files and applies no ``filters``) shows only that
    label, and a non-streaming load downloads only its files.
    """
    recipe = summary.recipe
    splits = [s for s in recipe.splits if summary.split_sizes.get(s)]
    features_yaml = features_of(recipe, summary.manifest)._to_yaml_list()
    files = [{"split": s, "path": f"data/*/{s}-*"} for s in splits]
    configs = [{"config_name": "default", "default": True, "data_files": files}]
    infos = [_info("default", features_yaml, {s: summary.split_sizes[s] for s in splits}, summary)]
    for value in recipe.attributes[recipe.primary].values:
        sizes = {s: summary.primary_split[value][s] for s in splits if summary.primary_split[value][s]}
        if not sizes:
            continue
        configs.append({"config_name": value, "data_files": [{"split": s, "path": f"data/{value}/{s}-*"}
                                                             for s in sizes]})
        infos.append(_info(value, features_yaml, sizes, summary, value))
    return configs, infos


def _info(name: str, features_yaml: list, sizes: dict[str, int], summary: Summary,
          label: str | None = None) -> dict[str, Any]:
    labels = [label] if label else list(summary.label_bytes)
    split_list = [{"name": s, "num_bytes": int(sum(summary.arrow_bytes[v, s] for v in labels)), "num_examples": n}
                  for s, n in sizes.items()]  # measured per label and split, as load_dataset holds them
    download = summary.label_bytes[label] if label else sum(summary.split_bytes.values())
    return {
        "config_name": name,
        "features": copy.deepcopy(features_yaml),  # one copy per config: no YAML anchors on the Hub page
        "splits": split_list,
        "download_size": int(download),
        "dataset_size": int(sum(x["num_bytes"] for x in split_list)),
    }


def changes_since_previous(manifest: Manifest) -> dict[str, int]:
    """Rows added per label cell since the previous version (empty for a first version)."""
    previous = (manifest.get("previous") or {}).get("cells", {})
    if not manifest.get("previous"):
        return {}
    cells = manifest.get("cells", {})
    return {cell: n - previous.get(cell, 0) for cell, n in cells.items() if n != previous.get(cell, 0)}


def quality_tables(recipe: Recipe, manifest: Manifest) -> dict[str, Any]:
    """The quality report for the card: per label cell, or per primary label when cells are many."""
    report = quality_report(manifest.shards)
    cells = report["cells"]
    grouping = " / ".join(recipe.attributes)
    if len(cells) > MAX_CARD_CELLS:
        at = list(recipe.attributes).index(recipe.primary)
        cells = quality_report(manifest.shards, group=lambda cell: cell.split("/")[at])["cells"]
        grouping = recipe.primary
    gates = dict((manifest.get("generation") or {}).get("quality") or {})
    params = manifest.get("parameters") or {}
    if params.get("verify") and params.get("verify_mode") == "gate":
        gates["verify"] = list(params["verify"])
    return {"total": report["total"], "cells": cells, "grouping": grouping, "gates": gates,
            "per_cell_in_manifest": len(report["cells"]) > MAX_CARD_CELLS,
            "reasons": [*REASONS, *(r for r in (report["total"] or {}).get("by_reason", {}) if r not in REASONS)]}


def review_tables(recipe: Recipe, manifest: Manifest) -> dict[str, Any]:
    """Rows rejected in review per label cell (per primary label when cells are many) and per reason."""
    review = manifest.get("review") or {}
    cells = review.get("cells") or {}
    grouping = " / ".join(recipe.attributes)
    if len(cells) > MAX_CARD_CELLS:
        at = list(recipe.attributes).index(recipe.primary)
        grouped: Counter = Counter()
        for cell, n in cells.items():
            grouped[cell.split("/")[at]] += n
        cells, grouping = dict(sorted(grouped.items())), recipe.primary
    reasons = dict(review.get("reasons") or {})  # escaped and shortened where the card shows them
    return {"review": review, "review_cells": cells, "review_grouping": grouping, "review_reasons": reasons}


def card_license(recipe: Recipe, manifest: Manifest) -> tuple[str, str | None, str | None]:
    """``(license, license_name, license_link)``: the model's licence when it is recorded, else the recipe's."""
    model = manifest.get("model") or {}
    license = model.get("license") or recipe.license or "other"
    if license != "other":
        return license, None, None
    name = model.get("name") if model.get("kind") == "hub" else None
    return "other", "model-licence", f"https://huggingface.co/{name}" if name else None


def speedups(recipe: Recipe, overrides: dict) -> dict:
    """The run's pruning and guidance settings, with the whole steps they switch at (as the engine rounds)."""
    settings = {**recipe.settings, **overrides}
    steps = settings["steps"]
    prune = switch_step(settings.get("prune_at"), steps) if settings.get("keep") is not None else None
    return {"steps": steps, "keep": settings.get("keep"), "prune_step": prune,
            "cfg_step": switch_step(settings.get("cfg_until"), steps)}


def render_card(data: DatasetCardData, **values: Any) -> DatasetCard:
    """``templates/card.md`` rendered so that no text from a person, a recipe or a folder name can change the
    card's structure: every value is escaped for Markdown and HTML where it lands (see :mod:`facesynth.escape`)."""
    template = environment().from_string(
        (resources.files("facesynth.dataset_card") / "templates" / "card.md").read_text(encoding="utf-8"))
    return DatasetCard(template.render(card_data=Markup(data.to_yaml()), **{**data.to_dict(), **values}))


def build_card(root: str | Path, repo_id: str | None = None, revision: str | None = None,
               gated: bool = False, write_grid: bool | None = True, summary: Summary | None = None,
               name: str | None = None) -> DatasetCard:
    """Build the card for a dataset folder (and refresh its sample grid, unless ``write_grid`` is off and it
    exists; ``None`` never writes it, as ``validate`` needs).

    ``repo_id`` (ORG/NAME) is the Hub repo the card is for; without it the snippets name the folder
    by its own name (or ``name``), never by an absolute path. ``revision`` is the tag the snippets pin.
    """
    root = Path(root)
    summary = summary or summarize(root)
    grid = root / "assets" / "samples.png"
    if write_grid or (write_grid is not None and not grid.is_file()):
        grid = sample_grid(root, summary)
    recipe, manifest = summary.recipe, summary.manifest
    checked = verification(root, manifest, recipe)
    sets = identity_report(root, manifest, recipe, write_picture=bool(write_grid) or not (root / PICTURE).is_file()
                           and write_grid is not None)
    if write_grid:  # the verifiers' confusion matrices are refreshed with the grid
        write_pictures(root, checked)
    configs, infos = configs_and_infos(summary)
    pretty = f"facesynth {recipe.name}"
    license, license_name, license_link = card_license(recipe, manifest)
    model = manifest.get("model") or {}
    tiny = model.get("kind") == "tiny"
    sensitive = [a for a in recipe.attributes if any(word in a for word in SENSITIVE)]
    extra = {}
    if license_name:
        extra.update(license_name=license_name, **({"license_link": license_link} if license_link else {}))
    if gated:
        extra.update(extra_gated_prompt=GATED_PROMPT,
                     extra_gated_fields={"Affiliation": "text", "Intended use": "text",
                                         "I will not use this dataset to identify people or to infer attributes of "
                                         "real people": "checkbox"})
    data = DatasetCardData(
        license=license,
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        language=["en"],
        source_datasets=["original"],
        task_categories=["image-classification"],
        task_ids=["multi-class-image-classification"],
        tags=[*TAGS, *(t.replace("_", "-") for t in recipe.attributes), *(["test-data"] if tiny else [])],
        size_categories=[size_category(summary.total)],
        pretty_name=pretty,
        configs=configs,
        dataset_info=infos,
        train_eval_index=train_eval_index(recipe, summary),
        **extra,
    )
    by = "gender" if "gender" in recipe.attributes else None
    by_values = list(recipe.attributes[by].values) if by else []
    overrides = (manifest.get("generation") or {}).get("overrides") or {}
    return render_card(
        data,
        repo_id=repo_id or name or root.name,
        hub=repo_id is not None,
        revision=revision,
        tiny=tiny,
        license=license,
        license_link=license_link,
        model_license=model.get("license"),
        model_name=model.get("name"),
        recipe_file=Path(str(manifest["recipe"].get("source", ""))).name,
        overrides=", ".join(f"{k} {v}" for k, v in overrides.items()),
        preset=(manifest.get("generation") or {}).get("preset"),
        unguided=overrides.get("guidance", recipe.settings["guidance"]) <= 1 and bool(recipe.negative_prompt),
        speedups=speedups(recipe, overrides),
        sensitive=sensitive,
        recipe=recipe,
        manifest=manifest.data,
        summary=summary,
        splits=[s for s in recipe.splits if summary.split_sizes.get(s)],
        split_balance=split_balance(summary),
        split_search=split_search(recipe, manifest),
        by=by,
        by_values=by_values,
        clip_stats={v: summary.clip[v].as_dict() for v in recipe.attributes[recipe.primary].values},
        identity=sets,
        audit=audit_section(root, manifest),
        confidence_stats={v: summary.confidence[v].as_dict() for v in recipe.attributes[recipe.primary].values},
        grid_path=grid.relative_to(root).as_posix(),
        version=manifest.get("version", FIRST_VERSION),
        previous=manifest.get("previous"),
        changes=changes_since_previous(manifest),
        primary_values=list(recipe.attributes[recipe.primary].values),
        pretty_name=pretty,
        quality=quality_tables(recipe, manifest),
        evaluation=for_card(root, manifest, recipe),
        verification=checked,
        **review_tables(recipe, manifest),
    )


BEGIN = "<!-- facesynth:begin"
END = "<!-- facesynth:end -->"


def merge_card(card: DatasetCard, existing: str | None) -> str | None:
    """``card`` merged into an existing README: our YAML keys replace theirs and other keys stay (as
    ``push_to_hub`` merges), our generated body replaces the part between the markers and the text
    around it stays. None when ``existing`` has no markers, so it is not a card facesynth can merge into.
    """
    if existing is None:
        return str(card)
    old = DatasetCard(existing, ignore_metadata_errors=True)
    if BEGIN not in old.text or END not in old.text:
        return None
    before, rest = old.text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    ours = card.text[card.text.index(BEGIN):]
    ours = ours[:ours.index(END) + len(END)]
    data = DatasetCardData(**{**old.data.to_dict(), **card.data.to_dict()})
    return f"---\n{data.to_yaml()}\n---\n{before.lstrip(chr(10)) if before.strip() else ''}{ours}{after}"


def write_card(root: str | Path, repo_id: str | None = None, revision: str | None = None,
               gated: bool = False, overwrite_card: bool = False, name: str | None = None) -> Path:
    """Write ``README.md`` and the sample grid (atomically), and list both in the manifest.

    Listed with their sha256, they are what ``--overwrite`` may delete later: a card
    someone edited since is no longer facesynth's to delete. A README without the facesynth
    markers is replaced only if facesynth wrote it (its sha256 is the listed one) or with
    ``overwrite_card``; otherwise it is refused, as ``push`` refuses such a README on the Hub.
    """
    root = Path(root)
    refuse_foreign_readme(root, overwrite_card)
    summary = summarize(root)
    card = build_card(root, repo_id, revision, gated, summary=summary, name=name)  # writes the grid and pictures
    pictures = [picture_name(a) for a in verified_attributes(summary.manifest)]
    pictures += [PICTURE] if summary.recipe.identities is not None else []
    path = root / "README.md"
    existing = path.read_text(encoding="utf-8") if path.is_file() else None
    text = merge_card(card, existing) or str(card)  # refuse_foreign_readme let only ours, or --overwrite-card, here
    with atomic_write(path) as f:
        f.write(text)
    manifest = read_manifest(root)
    manifest.data["files"] = {**(manifest.get("files") or {}),
                              **{name: sha256_file(root / name) for name in ("README.md", "assets/samples.png",
                                                                            *pictures)}}
    # what validate rebuilds the card with (a folder copied under another name keeps its card)
    manifest.data["card"] = {"repo_id": repo_id, "revision": revision, "gated": gated, "name": name or root.name}
    manifest.save(root)
    return path


def foreign_readme(root: Path) -> bool:
    """Whether ``README.md`` is someone else's: no facesynth markers, and not the one facesynth wrote."""
    path = Path(root) / "README.md"
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8", errors="replace")
    if BEGIN in text and END in text:
        return False
    listed = ((read_manifest(root).get("files") or {}).get("README.md"))
    return listed != sha256_file(path)


def refuse_foreign_readme(root: Path, overwrite_card: bool) -> None:
    if not overwrite_card and foreign_readme(root):
        raise OutputError(f"'{Path(root) / 'README.md'}': not written by facesynth (it has no facesynth markers), so "
                          "it cannot be merged; give --overwrite-card to replace it (nothing was changed)")


def generated_part(text: str) -> str | None:
    """The text between the facesynth markers (None without them)."""
    if BEGIN not in text or END not in text:
        return None
    return text[text.index(BEGIN):text.index(END, text.index(BEGIN)) + len(END)]
