from collections import Counter

import datasets
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
