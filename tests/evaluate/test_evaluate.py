"""``facesynth evaluate`` end to end: a tiny dataset whose images have known content, a small real dataset made
here, and the figures checked against scikit-learn computed independently on the same embeddings."""

import io
import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import invoke, other_clip

from facesynth.generation import GenerateConfig, generate

EMOTIONS = ["happy", "sad", "angry", "surprised"]
COLOURS = {"happy": (230, 200, 40), "sad": (40, 60, 200), "angry": (200, 30, 30), "surprised": (40, 190, 80)}
SHAPE = (64, 64)


def solid(colour, seed, size=SHAPE, noise=25):
    """A solid colour with pixel noise: the same content for one colour, a different picture for each seed."""
    rng = np.random.default_rng(seed)
    pixels = np.array(colour)[None, None, :] + rng.normal(0, noise, (size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png(image):
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def scorer():
    from facesynth.checks.scoring import ClipScorer

    return ClipScorer.load("tiny")


def repaint(root, scorer, image_of):
    """Give every row the image ``image_of(row_number, emotion)`` and the tiny CLIP's embedding of it, as generate
    stores them; the manifest's shard records and the card follow, so the folder stays valid."""
    from facesynth.dataset_card import write_card
    from facesynth.folder.writer import arrow_bytes, sha256_file

    manifest = json.loads((root / "manifest.json").read_text())
    number = 0
    for name in sorted(manifest["shards"]):
        table = pq.read_table(root / name)
        data = table.to_pydict()
        images = []
        for label in data["emotion"]:
            images.append(image_of(number, EMOTIONS[label]))
            number += 1
        data["image"] = [{"bytes": png(im), "path": None} for im in images]
        data["clip_embedding"] = scorer.pil_embeddings(images).numpy().tolist()
        pq.write_table(pa.Table.from_pydict(data, schema=table.schema), root / name)
        record = manifest["shards"][name]
        record.update(sha256=sha256_file(root / name), bytes=(root / name).stat().st_size,
                      arrow_bytes=arrow_bytes(root / name))
    (root / "manifest.json").write_text(json.dumps(manifest))
    write_card(root)


@pytest.fixture
def coloured(demo_copy, scorer):
    """The demo dataset, each emotion a colour (with noise): labels a linear probe must find."""
    repaint(demo_copy, scorer, lambda i, emotion: solid(COLOURS[emotion], seed=i))
    return demo_copy


def real_folder(path, per_value=6, seed=1000, names=None):
    """An image folder of real photos: ``path/test/<label>/<i>.png`` (labels from the folder names)."""
    for k, value in enumerate(names or EMOTIONS):
        folder = path / "test" / value
        folder.mkdir(parents=True)
        for i in range(per_value):
            solid(COLOURS[EMOTIONS[k % 4]], seed + 100 * k + i, size=(48, 40)).save(folder / f"{i}.png")
    return path


def evaluation(root):
    return json.loads((root / "evaluation.json").read_text())


def stored(root):
    """The stored embeddings and emotion labels, read straight from the shards."""
    files = sorted((root / "data").glob("*/*.parquet"))
    tables = [pq.read_table(f, columns=["emotion", "clip_embedding"]).to_pydict() for f in files]
    x = np.array([e for t in tables for e in t["clip_embedding"]], dtype=np.float32)
    return x, np.array([y for t in tables for y in t["emotion"]])


def test_a_separable_dataset_is_separable_and_the_folder_lists_what_evaluate_wrote(coloured, capsys):
    from facesynth.validate import validate
    from facesynth.folder.writer import sha256_file

    assert invoke(["evaluate", str(coloured), "-q"]) == 0
    out = capsys.readouterr().out
    result = evaluation(coloured)
    sep = result["separability"]
    assert sep["emotion"]["accuracy"] >= 0.9 and sep["emotion"]["chance"] == 0.25
    assert sep["emotion"]["folds"] == 5 and np.sum(sep["emotion"]["confusion"]) == 24
    assert sep["gender"]["accuracy"] <= 0.75  # gender is not in the pictures
    assert re.search(r"emotion\s+(0\.9\d\d|1\.000) \(chance 0\.250, 5 folds\)", out)
    assert out.splitlines()[-1] == f"wrote {coloured / 'evaluation.json'}"
    files = json.loads((coloured / "manifest.json").read_text())["files"]
    drawn = {f"assets/evaluation/separability-{a}.png" for a in ("emotion", "gender", "ethnicity")}
    assert {"evaluation.json", *drawn} <= set(files)
    for name in ("evaluation.json", *drawn):
        assert files[name] == sha256_file(coloured / name)
    assert Image.open(coloured / "assets/evaluation/separability-emotion.png").size[0] > 100
    report = validate(coloured, images=False)
    assert report.ok, report.problems


def test_copies_of_one_image_have_a_vendi_score_of_one(demo_copy, scorer):
    from facesynth.evaluate import evaluate

    one = solid(COLOURS["sad"], seed=0)
    repaint(demo_copy, scorer, lambda i, emotion: one)
    result = evaluate(demo_copy, progress=False)
    for by_value in result["diversity"]["attributes"].values():
        for d in by_value.values():
            assert d["vendi"] == pytest.approx(1.0, abs=1e-4)
            assert d["closest"]["similarity"] == pytest.approx(1.0, abs=1e-5)
            assert d["mean_distance"] == pytest.approx(0.0, abs=1e-5)
    repaint(demo_copy, scorer, lambda i, emotion: solid(COLOURS[emotion], seed=i, noise=120))
    noisy = evaluate(demo_copy, progress=False)
    assert all(d["vendi"] > 1.0 for d in noisy["diversity"]["attributes"]["emotion"].values())


def test_train_on_synthetic_test_on_real_equals_scikit_learn(coloured, scorer, tmp_path, capsys):
    import datasets
    import scipy.linalg
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    real = real_folder(tmp_path / "real")
    assert invoke(["evaluate", str(coloured), "--real", str(real), "--label-column", "label", "-q"]) == 0
    out = capsys.readouterr().out
    got = evaluation(coloured)["real"]
    assert got["name"] == "real" and got["split"] == "test" and got["rows_used"] == got["rows_read"] == 24
    assert "commit" not in got  # a local folder has none; a Hub id is pinned to the commit it resolved to

    loaded = datasets.load_dataset(str(real), split="test")
    names = loaded.features["label"].names
    x_real = scorer.pil_embeddings(loaded["image"]).numpy()
    y_real = np.array([EMOTIONS.index(names[i]) for i in loaded["label"]])
    x_syn, y_syn = stored(coloured)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, tol=1e-3, random_state=0)).fit(x_syn, y_syn)
    pred = model.predict(x_real)
    assert got["tstr"]["accuracy"] == pytest.approx((pred == y_real).mean())
    assert got["tstr"]["confusion"] == [[int(((y_real == i) & (pred == j)).sum()) for j in range(4)]
                                        for i in range(4)]
    assert got["tstr"]["accuracy"] >= 0.9  # the real photos have the synthetic rows' colours
    back = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, tol=1e-3, random_state=0)).fit(x_real, y_real)
    assert got["trts"]["accuracy"] == pytest.approx((back.predict(x_syn) == y_syn).mean())
    a, b = x_syn[y_syn == 0].astype(np.float64), x_real[y_real == 0].astype(np.float64)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu = a.mean(0) - b.mean(0)
    fid = mu @ mu + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    assert got["distance"]["per_value"]["happy"]["fid"] == pytest.approx(fid, rel=1e-3, abs=1e-5)
    assert "train on synthetic, test on real: " in out and "CLIP-space FID" in out


def test_the_card_section_shows_what_evaluation_json_holds(coloured, tmp_path):
    from huggingface_hub import DatasetCard

    from facesynth.evaluate import evaluate
    from facesynth.evaluate.real import RealSpec

    result = evaluate(coloured, RealSpec(str(real_folder(tmp_path / "real")), "label"), progress=False)
    text = DatasetCard.load(coloured / "README.md").text
    section = text[text.index("## Evaluation"):text.index("## Usage")]
    for attr, s in result["separability"].items():
        assert f"| {attr} | {s['folds']} | {s['accuracy']:.3f} | {s['chance']:.3f} |" in section
        assert f"![{attr} confusion matrix](assets/evaluation/separability-{attr}.png)" in section
    for value, d in result["diversity"]["attributes"]["emotion"].items():
        ids = ", ".join(d["closest"]["ids"])
        assert (f"| emotion | {value} | {d['rows']} | {d['vendi']:.2f} | {d['mean_distance']:.3f} | "
                f"{d['closest']['similarity']:.3f} | {ids} |") in section
    tstr = result["real"]["tstr"]
    assert f"| train on synthetic, test on real | 24 | 24 | {tstr['accuracy']:.3f} | {tstr['chance']:.3f} |" in section
    assert "| " + " | ".join(f"{tstr['recall'][v]:.3f}" for v in EMOTIONS) + " |" in section
    assert "(assets/evaluation/tstr-emotion.png)" in section and (coloured / "assets/evaluation/tstr-emotion.png").is_file()
    assert "It does not say how well a model trained on these pixels" in section
    assert "earlier version" not in section


@pytest.mark.slow
def test_growing_the_data_makes_the_evaluation_again(coloured):
    from facesynth.evaluate import evaluate
    from facesynth.validate import validate

    first = evaluate(coloured, progress=False)
    generate(GenerateConfig(recipe="emotions", out=coloured, num_samples=32, model="tiny", quiet=True,
                            rows_per_shard=8, batch_size=12))
    again = evaluation(coloured)
    assert again["data"]["rows"] == 32 and again["data"]["fingerprint"] != first["data"]["fingerprint"]
    assert again["data"]["version"] == "1.1.0"
    assert validate(coloured, images=False).ok


@pytest.mark.slow
def test_validate_and_the_card_notice_an_evaluation_older_than_the_data(coloured, tmp_path, caplog):
    from huggingface_hub import DatasetCard

    from facesynth.evaluate import evaluate
    from facesynth.evaluate.real import RealSpec
    from facesynth.validate import validate

    real = real_folder(tmp_path / "real")
    evaluate(coloured, RealSpec(str(real), "label"), progress=False)
    shutil.rmtree(real)  # the real photos are gone, so growing cannot measure the new data against them
    generate(GenerateConfig(recipe="emotions", out=coloured, num_samples=32, model="tiny", quiet=True,
                            rows_per_shard=8, batch_size=12))
    assert "evaluation.json describes the data before this run and was not made again" in caplog.text
    problems = [str(p) for p in validate(coloured, images=False).problems]
    assert problems == [f"evaluation.json: older than the data (it measured 24 rows of version 1.0.0); run "
                        f"`facesynth evaluate {coloured}`"]
    text = DatasetCard.load(coloured / "README.md").text
    assert "These figures describe an earlier version of the data (24 rows of version 1.0.0), not this one" in text


def test_an_altered_evaluation_is_reported(coloured):
    from facesynth.evaluate import evaluate
    from facesynth.validate import validate

    evaluate(coloured, progress=False)
    path = coloured / "assets/evaluation/separability-gender.png"
    path.write_bytes(path.read_bytes() + b"x")
    problems = [str(p) for p in validate(coloured, images=False).problems]
    assert problems == ["assets/evaluation/separability-gender.png: changed since facesynth evaluate wrote it; run "
                        "`facesynth evaluate DIR`"]


def test_real_images_are_read_and_embedded_in_batches(coloured, tmp_path, monkeypatch):
    from facesynth.evaluate import real as real_module
    from facesynth.evaluate import evaluate
    from facesynth.evaluate.real import RealSpec
    from facesynth.checks.scoring import ClipScorer

    monkeypatch.setattr(real_module, "BATCH", 5)
    sizes = []
    embed = ClipScorer.pil_embeddings

    def counted(self, images):
        sizes.append(len(images))
        return embed(self, images)

    monkeypatch.setattr(ClipScorer, "pil_embeddings", counted)
    evaluate(coloured, RealSpec(str(real_folder(tmp_path / "real", per_value=4)), "label"), progress=False)
    assert sizes[0] == real_module.CHECK_ROWS  # the CLIP check, then the real rows five at a time
    assert sizes[1:] == [5, 5, 5, 1]


def parquet_real(path, labels):
    """A Parquet dataset of real photos with string labels, as many Hub datasets are."""
    import datasets

    images = [solid(COLOURS["happy"], i, size=(40, 40)) for i in range(len(labels))]
    ds = datasets.Dataset.from_dict({"image": images, "emotion": labels},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "emotion": datasets.Value("string")}))
    (path / "data").mkdir(parents=True)
    ds.to_parquet(str(path / "data" / "test-00000-of-00001.parquet"))
    return path


def test_labels_map_by_name_by_option_or_are_ignored(coloured, tmp_path):
    from facesynth.evaluate import evaluate
    from facesynth.evaluate.real import RealSpec

    real = parquet_real(tmp_path / "real", ["Happy", "SAD", "angry", "Surprised", "fear", "scared", "happy"] * 2)
    result = evaluate(coloured, RealSpec(str(real), "emotion", mapping={"scared": "surprised"}, ignore=["fear"]),
                      progress=False)["real"]
    assert result["rows_read"] == 14 and result["rows_used"] == 12
    assert result["counts"] == {"happy": 4, "sad": 2, "angry": 2, "surprised": 4}
    assert result["trts"] == {"skipped": "the real set needs at least 5 rows of each value it has"}


BAD = [
    (["--real", "{real}", "--label-column", "nope"],
     "Error: --label-column: 'nope' is not a column of '{real}' (image, label)"),
    (["--real", "{real}", "--label-column", "label", "--map", "happy=joy"],
     "Error: --map: 'joy' is not a value of emotion (happy, sad, angry, surprised)"),
    (["--real", "{real}", "--label-column", "label", "--map", "happy"],
     "Error: --map: 'happy' is not REAL_NAME=VALUE"),
    (["--real", "{real}", "--label-column", "label", "--split", "dev"],
     "Error: --split: 'dev' is not a split of '{real}' (test)"),
    (["--real", "{words}", "--label-column", "emotion"],
     "Error: --real: label(s) 'disgust', 'fear' of column 'emotion' map to no value of emotion (happy, sad, angry, "
     "surprised); add --map NAME=VALUE or --ignore-label NAME"),
    (["--real", "{real}", "--label-column", "label", "--attribute", "mood"],
     "Error: --attribute: 'mood' is not an attribute of the dataset (emotion, gender, ethnicity)"),
    (["--label-column", "label"], "Error: --label-column applies only with --real"),
    (["--real", "{real}"], "Error: --real needs --label-column (the column that holds its labels)"),
]


@pytest.mark.parametrize("args,line", BAD, ids=[b[1][7:40] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(coloured, tmp_path, capsys, args, line):
    real = real_folder(tmp_path / "real")
    words = parquet_real(tmp_path / "words", ["happy", "fear", "sad", "disgust"])
    before = (coloured / "manifest.json").read_bytes()
    capsys.readouterr()  # what making the folders printed
    given = [a.format(real=real, words=words) for a in args]
    assert invoke(["evaluate", str(coloured), *given]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == line.format(real=real), err
    assert len(err) <= 2 and "Traceback" not in "".join(err)  # a usage error adds click's pointer to --help
    assert not (coloured / "evaluation.json").exists() and (coloured / "manifest.json").read_bytes() == before


def test_a_folder_that_is_not_a_dataset_and_another_clip_are_refused(coloured, tmp_path, capsys):
    junk = tmp_path / "junk"
    (junk / "empty").mkdir(parents=True)
    assert invoke(["evaluate", str(coloured), "--real", str(junk), "--label-column", "label"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"Error: --real: '{junk}' is not a dataset load_dataset can read (") and "\n" not in err
    clip = other_clip(tmp_path / "clip")
    real = real_folder(tmp_path / "real")
    capsys.readouterr()
    assert invoke(["evaluate", str(coloured), "--real", str(real), "--label-column", "label",
                   "--clip-model", str(clip)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    err = err.splitlines()[-1]  # after transformers' own "Loading weights" bar
    assert re.fullmatch(r"Error: --clip-model: the dataset was made with CLIP 'tiny'; the one loaded gives other "
                        r"embeddings of its images \(cosine -?\d\.\d{3}\); give --clip-model that model", err), err
    assert invoke(["evaluate", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert not (coloured / "evaluation.json").exists()


def test_an_unfinished_dataset_is_refused(demo_copy, capsys):
    manifest = json.loads((demo_copy / "manifest.json").read_text())
    manifest["complete"] = False
    (demo_copy / "manifest.json").write_text(json.dumps(manifest))
    assert invoke(["evaluate", str(demo_copy)]) == 2
    assert capsys.readouterr().err.startswith(f"Error: '{demo_copy}': generation has not finished")


def test_values_with_no_rows_and_single_rows_are_reported_not_guessed(coloured):
    from facesynth.evaluate import evaluate

    result = evaluate(coloured, progress=False)
    cells = result["diversity"]["cells"]
    assert len(cells) == 24 and all(d["rows"] == 1 and d["closest"] is None for d in cells.values())
    assert all(d["vendi"] is None for d in cells.values())  # one row has nothing to be diverse from


@pytest.mark.slow
def test_overwrite_removes_the_evaluation_it_lists(coloured):
    from facesynth.evaluate import evaluate

    evaluate(coloured, progress=False)
    mine = coloured / "assets" / "evaluation" / "notes.md"  # the user's own file in that folder stays
    mine.write_text("mine")
    generate(GenerateConfig(recipe="emotions", out=coloured, num_samples=24, model="tiny", quiet=True, seed=9,
                            rows_per_shard=8, batch_size=12, overwrite=True))
    assert not (coloured / "evaluation.json").exists()
    assert sorted(p.name for p in (coloured / "assets" / "evaluation").iterdir()) == ["notes.md"]


def test_a_hub_dataset_that_cannot_be_resolved_is_one_line(coloured, capsys):
    assert invoke(["evaluate", str(coloured), "--real", "some-org/real-faces", "--label-column", "label"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("Error: --real: cannot resolve 'some-org/real-faces' on the Hub (")
    assert err.endswith("); give a local folder or check the name")


def test_the_same_data_gives_the_same_evaluation_bytes(coloured, tmp_path):
    from facesynth.evaluate import evaluate
    from facesynth.evaluate.real import RealSpec

    real = RealSpec(str(real_folder(tmp_path / "real")), "label")
    evaluate(coloured, real, progress=False)
    first = {p.relative_to(coloured): p.read_bytes() for p in [coloured / "evaluation.json",
                                                                *(coloured / "assets/evaluation").iterdir()]}
    evaluate(coloured, real, progress=False)
    assert {p: (coloured / p).read_bytes() for p in first} == first


# Real photos as they come: unlabelled rows, unreadable and oversized images -------------------------------
def classlabel_real(path, labels, images=None):
    """A Parquet real set with a ClassLabel column where -1 is datasets' "no label"."""
    import datasets

    images = images or [solid(COLOURS[EMOTIONS[max(y, 0) % 4]], i, size=(40, 40)) for i, y in enumerate(labels)]
    ds = datasets.Dataset.from_dict({"image": images, "label": labels, "box": [{"x": 1}] * len(labels)},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.ClassLabel(names=EMOTIONS),
                                                                "box": {"x": datasets.Value("int32")}}))
    (path / "data").mkdir(parents=True)
    ds.to_parquet(str(path / "data" / "test-00000-of-00001.parquet"))
    return path


def test_unlabelled_real_rows_are_left_out_and_counted_not_taken_for_the_last_class(coloured, tmp_path):
    from facesynth.evaluate import evaluate
    from facesynth.evaluate.real import RealSpec

    labels = [0, 1, 2, 3] * 3 + [-1] * 10
    real = classlabel_real(tmp_path / "real", labels)
    result = evaluate(coloured, RealSpec(str(real), "label"), progress=False)["real"]
    assert result["rows_read"] == 22 and result["rows_used"] == 12 and result["rows_unlabelled"] == 10
    assert result["counts"] == {"happy": 3, "sad": 3, "angry": 3, "surprised": 3}
    assert "10 rows without a label were left out" in (coloured / "README.md").read_text()


def _bad_files(folder):
    """An image folder whose happy/ holds an empty file, a truncated PNG and a text file besides good images."""
    real = real_folder(folder, per_value=3)
    happy = folder / "test" / "happy"
    (happy / "empty.png").write_bytes(b"")
    (happy / "cut.png").write_bytes((happy / "0.png").read_bytes()[:60])
    (happy / "notes.png").write_text("not an image")
    return real


def test_unreadable_real_images_stop_in_one_line_or_are_skipped_counted_and_named(coloured, tmp_path, capsys):
    real = _bad_files(tmp_path / "real")
    capsys.readouterr()
    args = ["evaluate", str(coloured), "--real", str(real), "--label-column", "label", "-q"]
    assert invoke(args) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"Error: --real: image '.*/(empty|cut|notes)\.png': .*; --skip-bad-images leaves such images "
                        r"out", err), err
    assert not (coloured / "evaluation.json").exists()
    assert invoke([*args, "--skip-bad-images"]) == 0
    result = evaluation(coloured)["real"]
    assert result["images_skipped"] == 3 and result["rows_used"] == 12
    whys = {s["image"]: s["why"] for s in result["skipped"]}
    assert whys["empty.png"] == "an empty file (0 bytes)"
    assert whys["cut.png"].startswith("truncated or damaged") and whys["notes.png"] == "not an image Pillow can read"
    assert "3 unreadable images were left out" in (coloured / "README.md").read_text()


def test_real_images_are_decoded_one_at_a_time_reduced_and_bounded_by_pixels(coloured, tmp_path, monkeypatch):
    """Large images reach CLIP reduced to at most REDUCED_SIDE on their shorter side; one over MAX_PIXELS (a
    decompression bomb) is refused by name before it is decoded."""
    from facesynth.evaluate import images as images_module
    from facesynth.evaluate import evaluate
    from facesynth.evaluate.real import RealDataError, RealSpec
    from facesynth.checks.scoring import ClipScorer

    monkeypatch.setattr(images_module, "REDUCED_SIDE", 32)
    real = real_folder(tmp_path / "real", per_value=2)
    solid(COLOURS["sad"], 7, size=(300, 200)).save(real / "test" / "sad" / "big.png")
    seen = []
    embed = ClipScorer.pil_embeddings
    monkeypatch.setattr(ClipScorer, "pil_embeddings", lambda self, ims: seen.extend(im.size for im in ims) or
                        embed(self, ims))
    evaluate(coloured, RealSpec(str(real), "label"), progress=False)
    assert sorted(set(seen[8:])) == [(48, 40), (50, 34)]  # 300x200 reduced by 6; the others as they are
    monkeypatch.setattr(images_module, "MAX_PIXELS", 300 * 200 - 1)
    with pytest.raises(RealDataError, match=r"image '.*big\.png': 300x200 is 0 M pixels, over the 0 M-pixel limit"):
        evaluate(coloured, RealSpec(str(real), "label"), progress=False)


BAD_REAL = [
    (["--real", "{labelled}", "--label-column", "label", "--image-column", "box"],
     "Error: --image-column: 'box' is not an image column (it holds struct values)"),
    (["--real", "{labelled}", "--label-column", "label", "--image-column", "label"],
     "Error: --image-column: 'label' is not an image column (it holds class labels)"),
    (["--real", "{labelled}", "--label-column", "image"],
     "Error: --label-column: 'image' holds images, not labels; give the column of class names or ids"),
    (["--real", "{labelled}", "--label-column", "label", "--seed", "-1"], "Error: Invalid value for '--seed'"),
    (["--real", "./no-such-real", "--label-column", "label"], "Error: --real: no such folder './no-such-real'"),
    (["--real", "{dataset}", "--label-column", "emotion"],
     "Error: --real: '{dataset}' is the dataset itself: synthetic images, not real photos; give "
     "--allow-synthetic-real if that is what you mean to compare with"),
    (["--real", "{other}", "--label-column", "emotion"],
     "Error: --real: '{other}' is a facesynth dataset: synthetic images, not real photos; give "
     "--allow-synthetic-real if that is what you mean to compare with"),
    (["--split", "train"], "Error: --split applies only with --real"),
]


@pytest.mark.parametrize("args,line", BAD_REAL, ids=[b[1][7:40] for b in BAD_REAL])
def test_bad_real_columns_paths_and_folders_are_one_line(coloured, demo_dataset, tmp_path, capsys, args, line):
    labelled = classlabel_real(tmp_path / "labelled", [0, 1, 2, 3])
    names = {"labelled": labelled, "dataset": coloured, "other": demo_dataset}
    capsys.readouterr()
    assert invoke(["evaluate", str(coloured), *[a.format(**names) for a in args]]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(line.format(**names)), err
    assert not (coloured / "evaluation.json").exists()


def test_a_real_set_of_one_value_and_one_split_says_what_its_figures_mean(coloured, tmp_path, caplog):
    from facesynth.evaluate import evaluate
    from facesynth.evaluate.real import RealSpec

    real = parquet_real(tmp_path / "real", ["happy"] * 4)
    (real / "data" / "test-00000-of-00001.parquet").rename(real / "data" / "train-00000-of-00001.parquet")
    result = evaluate(coloured, RealSpec(str(real), "emotion"), progress=False)
    assert result["real"]["split"] == "train" and result["settings"]["real"]["split"] == "train"
    assert "has no test split; using its only split, 'train'" in caplog.text
    assert result["real"]["tstr"]["note"].startswith("the real set holds only happy: this accuracy is the recall")
    assert "only happy" in result["real"]["trts"]["skipped"]


def test_a_damaged_evaluation_leaves_the_card_without_the_section_and_validate_says_so_once(coloured):
    from facesynth.dataset_card import write_card
    from facesynth.evaluate import evaluate
    from facesynth.validate import validate

    evaluate(coloured, progress=False)
    data = evaluation(coloured)
    data["separability"] = [1, 2]
    (coloured / "evaluation.json").write_text(json.dumps(data))
    write_card(coloured)
    assert "### Separability" not in (coloured / "README.md").read_text()
    assert [str(p) for p in validate(coloured, images=False).problems if "evaluation.json" in str(p)] == [
        "evaluation.json: changed since facesynth evaluate wrote it; run `facesynth evaluate DIR`"]
