import json
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


def test_the_card_states_the_split_balance_measured_on_the_rows(demo_dataset):
    """Each attribute value's distance from its share of a split, and each emotion x value's, counted from the
    rows load_dataset returns, is the figure the card gives (not a claim that every split is balanced)."""
    splits = datasets.load_dataset(str(demo_dataset))
    total = sum(len(d) for d in splits.values())
    attributes = ["emotion", "gender", "ethnicity"]
    rows = {name: list(zip(*(d[a] for a in attributes))) for name, d in splits.items()}
    worst = {"attribute": 0.0, "pair": 0.0}
    for j in range(len(attributes)):
        groups = {"attribute": lambda r: (r[j],), "pair": lambda r: (r[0], r[j])}
        for kind, key in groups.items():
            if kind == "pair" and j == 0:
                continue
            overall = Counter(key(r) for split in rows.values() for r in split)
            for split in rows.values():
                here = Counter(key(r) for r in split)
                worst[kind] = max([worst[kind]] + [abs(here[g] - n * len(split) / total) for g, n in overall.items()])
    text = (demo_dataset / "README.md").read_text()
    assert "so every split is balanced on every attribute" not in text
    assert (f"each attribute value is within {worst['attribute']:.1f} rows of its share of every split, and each "
            f"emotion with each attribute value within {worst['pair']:.1f} rows.") in text
    assert worst["pair"] > 0  # 24 rows over three splits cannot be split exactly


def test_the_card_names_the_searched_split_and_its_bound_holds_on_the_rows(demo_dataset):
    """emotions' shape takes the split searched per shape (format 8 on): the card says so with its bounds, which
    hold over every prefix of each split's rows as load_dataset returns them; older folders and other shapes
    keep the deficit rule's text."""
    from facesynth.dataset_card.summary import split_search
    from facesynth.recipe import load_recipe

    text = (demo_dataset / "README.md").read_text()
    assert ("each row takes the split searched for this recipe's shape, which keeps, in every split and at every "
            "prefix of its rows, each attribute value within 2 of the attribute's other values and each emotion "
            "with each attribute value within 2 of the others, and gives each label cell exactly its share of "
            "every split every 10 rounds of the cells.") in text
    recipe = load_recipe("emotions")
    for name, split in datasets.load_dataset(str(demo_dataset)).items():
        rows = sorted(zip(split["sample_id"], split["emotion"], split["gender"], split["ethnicity"]))
        for j, attribute in enumerate(["emotion", "gender", "ethnicity"], start=1):
            every = range(split.features[attribute].num_classes)  # class labels
            counts = Counter()
            for row in rows:
                counts[row[j]] += 1
                assert max(counts.values()) - min(counts[v] for v in every) <= 2, (name, attribute)
    assert split_search(recipe, {"format": 7}) is None  # made before the search: the deficit rule
    assert split_search(load_recipe("agfd"), {"format": 8}) is None
    assert split_search(recipe, {"format": 8}) == {"value": 2, "pair": 2, "rounds": 10}


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

    from facesynth.dataset_card.summary import RunningStats

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


SECTIONS = ["Splits", "How it was generated", "Attributes", "Human review", "Usage", "Limitations and bias",
            "Out-of-scope use", "Personal and sensitive information", "Licence", "Citation"]


def _hostile_folder(demo_dataset, tmp_path, name="demo", reason="", description="", model="", tag=None):
    """A copy of the demo dataset whose review history, recipe description and model name are ``reason``,
    ``description`` and ``model``, with its card written (for the repo of the folder's name, and ``tag``)."""
    import shutil

    import yaml

    from facesynth.dataset_card import write_card
    from facesynth.folder.writer import Manifest

    root = tmp_path / name
    shutil.copytree(demo_dataset, root)
    manifest = Manifest.load(root)
    manifest.data["review"] = {"rejected": 2, "cells": {"happy/male/black": 2}, "reasons": {reason: 2},
                               "pending": 0}
    recipe = yaml.safe_load(manifest["recipe"]["yaml"])
    recipe["description"] = description
    manifest.data["recipe"]["yaml"] = yaml.safe_dump(recipe, sort_keys=False)
    manifest.data["model"]["name"] = model
    manifest.save(root)
    write_card(root, revision=tag)
    return root


def _check_structure(text: str, repo_id: str, tag: str | None = None) -> None:
    """The card keeps its structure: the two markers only, every section in order, snippets that parse and
    name exactly this repo and tag."""
    import ast
    import re

    from facesynth.dataset_card import BEGIN, END

    assert text.count("<!--") == 2 and text.count(BEGIN) == 1 and text.count(END) == 1
    assert text.rstrip().endswith(END)
    headings = [h for h in re.findall(r"^## (.+)$", text, re.M) if h in SECTIONS]
    assert headings == SECTIONS, headings
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 3
    tree = ast.parse(blocks[0])
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "load_dataset"]
    assert calls and all(c.args[0].value == repo_id for c in calls)
    pinned = [kw.value.value for c in calls for kw in c.keywords if kw.arg == "revision"]
    assert pinned == [tag or "main"]
    for block in blocks[1:]:
        ast.parse(block)


def test_text_from_people_recipes_and_folders_cannot_cut_or_change_the_card(demo_dataset, tmp_path):
    """A review reason that is the end marker, a description that opens a comment and starts a heading, a model
    name with backticks and pipes, a folder name with quotes, and a tag that git allows but Python needs
    quoted: the card keeps every section, shows each text as text, and validate says it matches the data."""
    from facesynth.validate import validate

    reason = "<!-- facesynth:end --> | six fingers"
    root = _hostile_folder(demo_dataset, tmp_path, name='faces "x" \'y\'', reason=reason,
                           description="# Title\n<!-- hidden\n<script>alert(1)</script>", model="a`b|c*d*",
                           tag='v1"2')
    text = (root / "README.md").read_text()
    _check_structure(text, 'faces "x" \'y\'', 'v1"2')
    assert "&lt;!-- facesynth:end --&gt; \\| six fingers" in text and "\\# Title &lt;!-- hidden" in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<code>a\\`b\\|c\\*d\\*</code>" in text
    report = validate(root, images=False)
    assert report.ok, [str(p) for p in report.problems]
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(text.split("---", 2)[2])
    assert "&lt;!-- facesynth:end --&gt; | six fingers</td>" in html  # one cell, shown as the text it is
    assert "<h1>Title" not in html and "# Title &lt;!-- hidden &lt;script&gt;" in html
    assert all(f"<h2>{s}</h2>" in html for s in SECTIONS)


def test_a_long_reason_is_shortened_in_the_card(demo_dataset, tmp_path):
    root = _hostile_folder(demo_dataset, tmp_path, reason="blurry " + "x" * 10_000)
    line = next(line for line in (root / "README.md").read_text().splitlines() if line.startswith("| blurry"))
    assert len(line) < 200 and "…" in line


@pytest.mark.slow
def test_any_text_that_reaches_the_card_leaves_its_structure_intact(demo_dataset, tmp_path_factory):
    """Property: whatever a reviewer, a recipe's author, a model's or a folder's name writes."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from facesynth.dataset_card import build_card
    from facesynth.folder.writer import Manifest

    texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60) | st.sampled_from([
        "<!-- facesynth:end -->", "<!--", "-->", "```", "\n## Usage\n", "|", "\\", "`", "<img src=x onerror=1>",
        "${{ x }}", "{% raw %}", "\u2028", "1. x", "- x", "# x", "> x", "***", "[x](javascript:1)"])
    root = _hostile_folder(demo_dataset, tmp_path_factory.mktemp("fuzz"))
    manifest = Manifest.load(root)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(reason=texts, model=texts, name=texts.filter(lambda s: s.strip() != ""), tag=texts)
    def check(reason, model, name, tag):
        manifest.data["review"]["reasons"] = {reason: 2}
        manifest.data["model"]["name"] = model
        manifest.save(root)
        card = build_card(root, revision=tag or None, write_grid=False, name=name)
        _check_structure(card.text, name, tag or None)

    check()


def test_card_refuses_a_readme_it_did_not_write_as_push_does(demo_dataset, tmp_path, capsys):
    import shutil

    from conftest import invoke

    root = tmp_path / "demo"
    shutil.copytree(demo_dataset, root)
    (root / "README.md").write_text("# Our own dataset notes\n")
    assert invoke(["card", str(root)]) == 2
    err = capsys.readouterr().err
    assert err == (f"Error: '{root / 'README.md'}': not written by facesynth (it has no facesynth markers), so it "
                   "cannot be merged; give --overwrite-card to replace it (nothing was changed)\n")
    assert (root / "README.md").read_text() == "# Our own dataset notes\n"
    assert invoke(["card", str(root), "--overwrite-card"]) == 0
    assert "<!-- facesynth:begin" in (root / "README.md").read_text()


def test_validate_notices_a_generated_part_that_does_not_match_the_data(demo_dataset, tmp_path):
    import shutil

    from facesynth.validate import validate

    root = tmp_path / "demo"
    shutil.copytree(demo_dataset, root)
    readme = root / "README.md"
    text = readme.read_text()
    claim = "## Limitations and bias\n\nAll labels verified by hand."  # written inside the generated part
    readme.write_text(text.replace("## Limitations and bias", claim))
    assert [str(p) for p in validate(root, images=False).problems] == [
        "README.md: the generated part (between the facesynth markers) differs from the data; run `facesynth card DIR`"]
    readme.write_text(text.replace("<!-- facesynth:end -->", "<!-- facesynth:end -->\n\nOur notes, kept.\n"))
    assert validate(root, images=False).ok  # text outside the markers is the owner's


def test_a_full_disk_during_card_is_one_line_and_leaves_no_empty_assets(demo_dataset, tmp_path, capsys):
    import shutil

    from conftest import fill_disk, invoke, tmpfs

    with tmpfs(tmp_path / "disk", size="4m") as disk:
        root = disk / "demo"
        shutil.copytree(demo_dataset, root, ignore=shutil.ignore_patterns("assets", "README.md"))
        for leave, names in ((0, f"DIRECTORY: cannot write to '{root}'"), (12_000, str(root / "assets"))):
            (disk / "filler").unlink(missing_ok=True)
            fill_disk(disk, leave=leave)  # nothing left at all; then room for the lock but not the sample grid
            assert invoke(["card", str(root)]) == 1
            err = capsys.readouterr().err.splitlines()
            assert len(err) == 1 and names in err[0] and "No space left on device" in err[0], err
            assert "unexpected" not in err[0]
            assert sorted(p.name for p in root.iterdir()) == ["data", "manifest.json"]  # no empty assets/, no lock


def test_the_cards_sizes_are_measured_per_config_and_split(demo_dataset, tmp_path):
    """dataset_size is the rows' Arrow size (what load_dataset holds), per config and split; download_size the
    Parquet bytes of the config's own files. A manifest written before the figure was kept gives the same."""
    import shutil

    import yaml

    from facesynth.dataset_card import configs_and_infos, summarize
    from facesynth.folder.writer import Manifest

    infos = {i["config_name"]: i for i in yaml.safe_load((demo_dataset / "README.md").read_text().split("---")[1])[
        "dataset_info"]}
    manifest = json.loads((demo_dataset / "manifest.json").read_text())
    for name, info in infos.items():
        files = f"data/{'*' if name == 'default' else name}"
        ds = datasets.load_dataset(str(demo_dataset), data_files={s["name"]: f"{files}/{s['name']}-*"
                                                                  for s in info["splits"]})
        for split in info["splits"]:
            loaded = ds[split["name"]].data.nbytes
            assert abs(split["num_bytes"] - loaded) <= 0.01 * loaded, (name, split, loaded)  # validity bitmaps
        parquet = sum(r["bytes"] for n, r in manifest["shards"].items() if name == "default" or
                      n.split("/")[1] == name)
        assert info["download_size"] == parquet and info["dataset_size"] != info["download_size"]
    old = tmp_path / "old"
    shutil.copytree(demo_dataset, old)
    record = Manifest.load(old)
    for shard in record.shards.values():
        shard.pop("arrow_bytes")
    record.save(old)
    assert configs_and_infos(summarize(old)) == configs_and_infos(summarize(demo_dataset))


def test_control_and_bidi_characters_land_in_the_card_as_visible_escapes(demo_dataset, tmp_path):
    """A NUL and a right-to-left override in a recipe's description, a reviewer's reason and the folder name: the
    card holds none of them raw (git and grep see text), shows each as its escape, and its snippets still load
    the folder by its real name."""
    import ast
    import re
    import subprocess

    from facesynth.review.verdicts import clean_reason

    rlo, nul = "\u202e", "\x00"
    root = _hostile_folder(demo_dataset, tmp_path, name=f"faces{rlo}gpj.exe", reason=clean_reason(f"bad{rlo}eye"),
                           description=f"made{nul}by{rlo}me\x1b[2J")
    raw = (root / "README.md").read_bytes()
    text = raw.decode()
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text)
    assert "made\\\\x00by\\\\u202eme\\\\x1b\\[2J" in text and "bad\\\\u202eeye" in text
    snippet = re.search(r"```python\n(.*?)```", text, re.S)[1]
    calls = [n for n in ast.walk(ast.parse(snippet)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") ==
             "load_dataset"]
    assert calls[0].args[0].value == root.name  # the escape is Python's: the string is the folder's real name
    assert subprocess.run(["grep", "-c", "facesynth", str(root / "README.md")], capture_output=True,
                          text=True).stdout.strip().isdigit()  # grep reads it as text, not "binary file matches"


def test_the_card_declares_the_label_column_for_training_and_quotes_the_name_for_the_shell(demo_dataset, tmp_path):
    """train-eval-index maps the primary label to the task's label column; the transformers example names the
    label column, with a folder name quoted for the shell (or left for the reader when no quoting is safe)."""
    import shlex

    from huggingface_hub import DatasetCard

    root = _hostile_folder(demo_dataset, tmp_path, name="faces $(touch pwned)")
    card = DatasetCard((root / "README.md").read_text())
    assert card.data.to_dict()["train-eval-index"] == [{
        "config": "default", "task": "image-classification", "task_id": "multi_class_classification",
        "splits": {"train_split": "train", "eval_split": "test"}, "col_mapping": {"image": "image", "emotion": "label"}}]
    line = next(line for line in card.text.splitlines() if line.startswith("python run_image_classification.py"))
    assert shlex.split(line.rstrip("\\ "))[:5] == ["python", "run_image_classification.py", "--dataset_name", "faces $(touch pwned)",
                                     "--label_column_name"] and "emotion" in line
    tick = _hostile_folder(demo_dataset, tmp_path, name="a```b")
    assert "--dataset_name DATASET --label_column_name" in (tick / "README.md").read_text()


def test_a_folder_name_that_is_a_marker_stays_out_of_the_shell_line(demo_dataset, tmp_path):
    root = _hostile_folder(demo_dataset, tmp_path, name="<!-- facesynth:end -->")
    text = (root / "README.md").read_text()
    _check_structure(text, "<!-- facesynth:end -->")
    assert "--dataset_name DATASET --label_column_name" in text
