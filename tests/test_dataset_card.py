from collections import Counter

import datasets
import pytest
from huggingface_hub import DatasetCard
from PIL import Image

from facesynth.dataset_card import write_card


def test_card_parses_and_every_config_loads(demo_dataset):
    card = DatasetCard.load(demo_dataset / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "creativeml-openrail-m"
    assert data["task_categories"] == ["image-classification"]
    assert {"synthetic", "faces", "emotion"} <= set(data["tags"])
    assert data["size_categories"] == ["n<1K"] and data["pretty_name"]
    names = [c["config_name"] for c in data["configs"]]
    assert names[0] == "default" and set(names[1:]) <= {"happy", "sad", "angry", "surprised"}
    infos = {i["config_name"]: i for i in data["dataset_info"]}
    for name in names:  # non-streaming loads verify split sizes against dataset_info
        ds = datasets.load_dataset(str(demo_dataset), name)
        assert {k: len(v) for k, v in ds.items()} == {s["name"]: s["num_examples"] for s in infos[name]["splits"]}


def test_card_counts_equal_the_data(demo_dataset):
    text = (demo_dataset / "README.md").read_text()
    ds = datasets.concatenate_datasets(list(datasets.load_dataset(str(demo_dataset)).values()))
    names = ds.features["emotion"].names
    genders = ds.features["gender"].names
    counts = Counter((names[e], genders[g]) for e, g in zip(ds["emotion"], ds["gender"]))
    for emotion in names:
        total = sum(v for (e, _), v in counts.items() if e == emotion)
        row = f"| {emotion} | {total} | {counts[(emotion, 'male')]} | {counts[(emotion, 'female')]} |"
        assert row in text
    for split, d in datasets.load_dataset(str(demo_dataset)).items():
        assert f"| {split} | {len(d)} |" in text
    assert "## Limitations and bias" in text and "@misc{facesynth_emotions" in text
    assert "load_dataset(" in text and "revision=" in text and "DataLoader" in text


def test_sample_grid_has_one_row_per_label(demo_dataset):
    grid = Image.open(demo_dataset / "assets" / "samples.png")
    assert grid.height == 4 * 128  # happy, sad, angry, surprised
    assert "![Sample grid" in (demo_dataset / "README.md").read_text()


def test_card_regenerates_identically(demo_dataset):
    before = (demo_dataset / "README.md").read_text()
    write_card(demo_dataset)
    after = (demo_dataset / "README.md").read_text()
    strip = lambda t: "\n".join(line for line in t.splitlines() if "year" not in line)  # noqa: E731
    assert strip(before) == strip(after)


def test_sample_grid_shows_the_best_scoring_images_of_each_label(demo_dataset):
    """The streamed ranking (a heap per label) picks what a full sort of the data picks."""
    import io

    import numpy as np
    import pyarrow.parquet as pq

    from facesynth.dataset_card import GRID_CELL, GRID_COLUMNS

    rows = [r for f in sorted((demo_dataset / "data").glob("*/*.parquet"))
            for r in pq.read_table(f, columns=["sample_id", "emotion", "clip_score", "image"]).to_pylist()]
    grid = np.asarray(Image.open(demo_dataset / "assets" / "samples.png").convert("RGB"))
    for label in range(4):
        ranked = sorted((r for r in rows if r["emotion"] == label), key=lambda r: (-r["clip_score"], r["sample_id"]))
        for col, row in enumerate(ranked[:GRID_COLUMNS]):
            tile = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
            tile = np.asarray(tile.resize((GRID_CELL, GRID_CELL), Image.Resampling.LANCZOS))
            x, y = 150 + col * GRID_CELL, label * GRID_CELL
            assert np.array_equal(grid[y:y + GRID_CELL, x:x + GRID_CELL], tile), (label, col)


def test_running_stats_match_two_pass_statistics():
    import math
    import random
    import statistics

    from facesynth.dataset_card import RunningStats

    values = [random.Random(3).gauss(25, 4) for _ in range(1)] + [random.Random(i).uniform(0, 40) for i in range(999)]
    stats = RunningStats()
    for v in values:
        stats.add(v)
    d = stats.as_dict()
    assert d["n"] == 1000 and d["min"] == min(values) and d["max"] == max(values)
    assert math.isclose(d["mean"], statistics.fmean(values), rel_tol=1e-12)
    assert math.isclose(d["std"], statistics.pstdev(values), rel_tol=1e-9)
    assert math.isnan(RunningStats().as_dict()["mean"])


def test_each_per_label_config_holds_only_its_label_through_data_files_alone(demo_dataset):
    """What the Hub's viewer does: read a config's data_files whole, with no filters."""
    data = DatasetCard.load(demo_dataset / "README.md").data.to_dict()
    names = None
    for config in data["configs"][1:]:
        assert "filters" not in config
        files = {f["split"]: str(demo_dataset / f["path"]) for f in config["data_files"]}
        ds = datasets.load_dataset("parquet", data_files=files)
        names = names or ds["train"].features["emotion"].names
        assert list(ds) == ["train", "validation", "test"]
        assert {names[i] for d in ds.values() for i in d["emotion"]} == {config["config_name"]}
    default = {f["split"]: str(demo_dataset / f["path"]) for f in data["configs"][0]["data_files"]}
    assert sum(len(d) for d in datasets.load_dataset("parquet", data_files=default).values()) == 24


def test_card_for_a_repo_written_locally_and_text_outside_the_markers_kept(demo_dataset, tmp_path):
    import shutil

    from facesynth.cli import main

    root = tmp_path / "card"
    shutil.copytree(demo_dataset, root)
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("<!-- facesynth:end -->",
                                                 "<!-- facesynth:end -->\n\n## Team notes\n\nKept.\n"))
    with pytest.raises(SystemExit) as exit_info:
        main.main(args=["card", str(root), "--repo-id", "org/faces", "--tag", "v2.0.0"], prog_name="facesynth")
    assert exit_info.value.code == 0
    text = readme.read_text()
    assert 'load_dataset("org/faces", revision="v2.0.0")' in text and "## Team notes\n\nKept." in text
    assert str(tmp_path) not in text and "https://huggingface.co/datasets/org/faces" in text
    with pytest.raises(SystemExit) as exit_info:
        main.main(args=["card", str(root), "--repo-id", "no repo"], prog_name="facesynth")
    assert exit_info.value.code == 2


def test_the_settings_table_reads_as_prose(demo_dataset):
    text = (demo_dataset / "README.md").read_text()
    assert "this run used height 64, steps 4, width 64" in text and "{'" not in text  # no raw Python dict
    assert "none (each sample keeps its best candidate at the first attempt)" in text
    assert "(up to 3 attempts)" not in text
    assert "No quality gates were enabled: each sample kept the best-scoring of its 3 candidates." in text
    assert "candidates the gates checked" not in text  # no 'checked' count beside best-of-3 without gates
    local = [line for line in text.splitlines() if "load_dataset(" in line]
    assert local and all('"demo"' in line for line in local)  # the folder's name, never its absolute path
    assert str(demo_dataset.parent) not in text


def test_the_card_shows_the_models_licence_when_the_model_declares_one(demo_dataset):
    from facesynth.builder import read_manifest
    from facesynth.dataset_card import card_license
    from facesynth.recipe import load_recipe

    recipe, manifest = load_recipe("emotions"), read_manifest(demo_dataset)
    assert card_license(recipe, manifest) == ("creativeml-openrail-m", None, None)  # tiny declares none
    manifest.data["model"] = {"name": "org/model", "kind": "hub", "license": "apache-2.0"}
    assert card_license(recipe, manifest) == ("apache-2.0", None, None)
    manifest.data["model"]["license"] = "other"
    assert card_license(recipe, manifest) == ("other", "model-licence", "https://huggingface.co/org/model")
