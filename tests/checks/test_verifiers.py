"""Independent verifiers: a tiny random ViT classifier (and a tiny CLIP for zero-shot) saved as local folders."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import crash_at_shard, invoke, pickled_classifier, rows, shard_bytes, tiny_classifier, tiny_images

LABELS = "anger=angry,surprise=surprised"  # the tiny classifier's classes that do not match a value by name
VALUES = ["happy", "sad", "angry", "surprised"]


@pytest.fixture(scope="module")
def classifier(demo_dataset, tmp_path_factory):
    """Calibrated on the tiny preset's images, so its verdicts vary from image to image."""
    return tiny_classifier(tmp_path_factory.mktemp("clf") / "vit", scale=1.0, calibration=tiny_images(demo_dataset))


def config(out, classifier, **extra):
    from facesynth.generation import GenerateConfig

    # the demo dataset's settings, so a verified run can be compared with it
    return GenerateConfig(recipe="emotions", out=out, num_samples=24, model="tiny", quiet=True, rows_per_shard=8,
                          batch_size=12, verify=(f"emotion={classifier},{LABELS}",), **extra)


@pytest.fixture(scope="module")
def recorded(classifier, tmp_path_factory):
    from facesynth.generation import generate

    out = tmp_path_factory.mktemp("recorded") / "recorded"
    generate(config(out, classifier, verify_mode="record"))
    return out


def image_bytes(out):
    return {r["sample_id"]: r["image"]["bytes"] for r in rows(out, ["sample_id", "image"])}


# Bad input ------------------------------------------------------------------------------
def clip_folder(path):
    from conftest import other_clip

    return other_clip(path)


BAD = [
    (["--verify", "mood={clf}"], "Error: --verify: 'mood' is not an attribute of recipe 'emotions' "
                                 "(emotion, gender, ethnicity)"),
    (["--verify", "emotion"], "Error: --verify: 'emotion' is not ATTRIBUTE=MODEL (or ATTRIBUTE=zero-shot:MODEL)"),
    (["--verify", "emotion={clf}"], "Error: --verify emotion: no class of the model maps to 'angry', 'surprised' "
                                    "(classes: happy, Sad, anger, surprise, neutral); map one with --verify "
                                    "emotion={clf},CLASS=angry"),
    (["--verify", "emotion={clf},joy=happy," + LABELS],
     "Error: --verify emotion: labels: the model has no class 'joy' (happy, Sad, anger, surprise, neutral)"),
    (["--verify", "emotion={clf},anger=furious"],
     "Error: --verify emotion: labels: 'furious' is not a value of emotion (happy, sad, angry, surprised)"),
    (["--verify", f"emotion={{clf}},{LABELS},min_probability=1.5"],
     "Error: --verify emotion: min_probability: Input should be less than or equal to 1"),
    (["--verify", "emotion={clip}"], "Error: --verify emotion: '{clip}' is not an image classifier (architectures: "
                                     "CLIPModel); give an image-classification model or zero_shot: a CLIP"),
    (["--verify", "emotion={pickled}"], "Error: --verify emotion: '{pickled}' has no safetensors weights; facesynth "
                                        "loads no pickled weights (convert it with `safetensors`' convert script)"),
    (["--verify", "ethnicity=zero-shot:tiny"], "Error: --verify ethnicity: the zero-shot verifier must be another "
                                               "model than the reranking CLIP ('tiny'), or it only repeats its own "
                                               "choice"),
    (["--verify", "emotion=zero-shot:{clip},a=b"], "Error: --verify emotion: labels: a zero-shot verifier scores the "
                                                   "attribute's own values; labels map the classes of a classifier "
                                                   "('model')"),
    (["--verify", "emotion=org/not-downloaded"], "Error: --verify emotion: cannot fetch 'org/not-downloaded' ("),
]


@pytest.mark.parametrize("args, line", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_verifiers_are_one_line_exit_2_before_the_generator_and_write_nothing(
        classifier, tmp_path, capsys, monkeypatch, args, line):
    from facesynth.generation import loading

    def no_generator(*a, **k):
        raise AssertionError("the generator was loaded")

    monkeypatch.setattr(loading, "load_pipeline", no_generator)  # bad input is refused before it
    paths = {"clf": classifier, "clip": tmp_path / "clip", "pickled": tmp_path / "pickled"}
    clip_folder(paths["clip"])
    pickled_classifier(paths["pickled"])
    args = [a.format(**paths) for a in args]
    out = tmp_path / "out"
    capsys.readouterr()
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "8", "--out", str(out), "-q", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(line.format(**paths)), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_recipe_verifier_is_checked_with_the_recipe(tmp_path):
    from facesynth.errors import RecipeError
    from facesynth.recipe import load_recipe, resolve

    _, text = resolve("emotions")
    path = tmp_path / "r.yaml"
    path.write_text(text + "verify:\n  mood: {model: x}\n")
    with pytest.raises(RecipeError, match=r"r.yaml: verify.mood: not an attribute \(emotion, gender, ethnicity\)"):
        load_recipe(path)
    path.write_text(text + "verify:\n  emotion: {model: x, zero_shot: y}\n")
    with pytest.raises(RecipeError, match="give exactly one of 'model'"):
        load_recipe(path)
    path.write_text(text + "verify:\n  emotion: {model: x, min_probability: -0.1}\n")
    with pytest.raises(RecipeError, match="min_probability"):
        load_recipe(path)
    assert load_recipe("emotions").fingerprint() == load_recipe("emotions").model_copy(
        update={"verify": {}}).fingerprint()  # a recipe without verifiers keeps its fingerprint


# Crops ----------------------------------------------------------------------------------
def test_a_face_box_is_padded_by_the_margin_and_clipped_to_the_image(classifier):
    from facesynth.recipe import load_recipe
    import torch

    from facesynth.checks.verifiers import crop_box, load_verifiers, parse_option, verify

    assert crop_box((10, 20, 20, 40), 64, 64, 0.25) == (5, 10, 35, 64)
    assert crop_box((0, 0, 8, 8), 64, 48, 0.5) == (0, 0, 12, 12)
    assert crop_box(None, 64, 48, 0.25) == (0, 0, 64, 48)
    recipe = load_recipe("emotions")
    attr, spec = parse_option(f"emotion={classifier},{LABELS}", recipe)
    verifiers = load_verifiers({attr: spec}, recipe, "tiny", "cpu", torch.float32)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    labels = [{"emotion": "sad"}]
    boxed = verify(verifiers, pixels, [(10, 20, 20, 40)], labels, 0.25)
    cropped = verify(verifiers, np.ascontiguousarray(pixels[:, 10:64, 5:35]), [None], labels, 0.25)
    whole = verify(verifiers, pixels, [None], labels, 0.25)
    assert boxed == cropped and boxed != whole


# In the loop --------------------------------------------------------------------------------
def test_verifying_each_candidate_when_checked_gives_the_batched_verdicts(tiny_pipe, tiny_scorer, emotions,
                                                                        classifier):
    """With --faces the verifier sees each candidate's crop when the gates reach it; without a box that is
    the whole image, so the verdicts equal the batched ones."""
    import torch

    from conftest import make_engine
    from facesynth.plan import Plan
    from facesynth.checks.verifiers import load_verifiers, parse_option

    attr, spec = parse_option(f"emotion={classifier},{LABELS}", emotions)
    verifiers = load_verifiers({attr: spec}, emotions, "tiny", "cpu", torch.float32)
    samples = Plan(emotions, 4, 0, 3).samples
    batched = make_engine(tiny_pipe, tiny_scorer, emotions, candidates=3, verify_mode="record")
    batched.verifiers = verifiers
    lazy = make_engine(tiny_pipe, tiny_scorer, emotions, candidates=3, verify_mode="record")
    lazy.verifiers, lazy.crop_faces = verifiers, True
    one = list(batched.run(samples))
    other = list(lazy.run(samples))
    assert [w.pixels.tobytes() for w in one] == [w.pixels.tobytes() for w in other]
    for a, b in zip(one, other):
        assert a.verified["emotion"][0] == b.verified["emotion"][0]
        assert abs(a.verified["emotion"][1] - b.verified["emotion"][1]) < 1e-5
    assert lazy.timings.seconds["verify"] > 0


@pytest.mark.slow
def test_gate_mode_keeps_exact_quotas_with_refills_and_resumes_to_the_same_bytes(classifier, tmp_path, capsys):
    from facesynth.generation import generate
    from facesynth.validate import validate

    out = tmp_path / "gated"
    result = generate(config(out, classifier, max_refills=60))
    assert result.quality["by_reason"]["verify:emotion"] > 0 and result.quality["refills"] > 0
    table = rows(out, ["emotion", "verified_emotion", "verified_emotion_probability"])
    assert Counter(r["emotion"] for r in table) == {0: 6, 1: 6, 2: 6, 3: 6}  # exact quotas
    assert all(r["verified_emotion"] == r["emotion"] for r in table)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verifiers"][0]["labels"]["anger"] == "angry"
    assert manifest["verifiers"][0]["labels"]["neutral"] == "other"
    assert manifest["parameters"]["verify_mode"] == "gate" and "emotion" in manifest["parameters"]["verify"]
    assert validate(out, reproduce=2).ok
    killed = tmp_path / "killed"
    with crash_at_shard(3):
        generate(config(killed, classifier, max_refills=60))
    generate(config(killed, classifier, max_refills=60))
    assert shard_bytes(killed) == shard_bytes(out)
    assert invoke(["validate", str(out)]) == 0


@pytest.mark.slow
def test_record_mode_changes_no_pixel_and_the_card_shows_the_confusion_matrix_of_the_shards(
        recorded, demo_dataset):
    from datasets import load_dataset
    from sklearn.metrics import confusion_matrix

    assert image_bytes(recorded) == image_bytes(demo_dataset)  # same pixels as the unverified run
    ds = load_dataset(str(recorded), split="train+validation+test")
    assert ds.features["verified_emotion"].names == [*VALUES, "other"]
    expected = confusion_matrix(ds["emotion"], ds["verified_emotion"], labels=range(5))[:4]
    assert (expected.diagonal().sum() < len(ds)), "the test needs a verifier that disagrees sometimes"
    card = (recorded / "README.md").read_text()
    section = card[card.index("## Verification"):]
    table = section[section.index("| requested ↓ verified →"):].split("\n\n")[0].splitlines()[2:]
    shown = [[int(n) for n in line.strip("|").split("|")[1:]] for line in table]
    assert shown == expected.tolist()
    agree = expected.diagonal().sum()
    assert f"on {100 * agree / len(ds):.1f}% ({agree} of {len(ds)}) rows" in section
    assert (recorded / "assets/verification/emotion.png").is_file()
    listed = json.loads((recorded / "manifest.json").read_text())["files"]
    assert "assets/verification/emotion.png" in listed
    assert "A verifier is another model's opinion" in card


@pytest.mark.slow
def test_reproduce_and_validate_check_the_verifier_columns_again(recorded, tmp_path, capsys):
    from facesynth.reproduce import reproduce
    from facesynth.validate import validate

    result = reproduce(recorded, "emotions-0000003")
    assert result.identical and not result.verifier_differs and set(result.verified) == {"emotion"}
    copy = tmp_path / "copy"
    shutil.copytree(recorded, copy)
    shard = sorted((copy / "data").glob("*/*.parquet"))[0]
    table = pq.read_table(shard)
    sid = table["sample_id"][0].as_py()
    verdicts = table["verified_emotion"].to_pylist()
    verdicts[0] = (verdicts[0] + 1) % 5
    field = table.schema.field("verified_emotion")
    table = table.set_column(table.schema.get_field_index(field.name), field, pa.array(verdicts, field.type))
    pq.write_table(table, shard)
    report = validate(copy, reproduce=24)
    assert any(p.where == sid and p.message.startswith("verified_emotion: the verifier now says")
               for p in report.problems), report.problems


@pytest.mark.slow
def test_validate_reports_a_row_that_breaks_what_the_gate_promised(recorded, tmp_path):
    from facesynth.validate import validate

    copy = tmp_path / "copy"
    shutil.copytree(recorded, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["parameters"]["verify_mode"] = "gate"  # as if the disputed rows had been kept by the gate
    (copy / "manifest.json").write_text(json.dumps(manifest))
    disputed = [r["sample_id"] for r in rows(copy, ["sample_id", "emotion", "verified_emotion"])
                if r["emotion"] != r["verified_emotion"]]
    report = validate(copy, images=False)
    flagged = {p.message.split(":")[0] for p in report.problems if "the run kept only rows it verified as" in p.message}
    assert disputed and flagged == set(disputed)


@pytest.mark.slow
def test_the_gallery_filters_disputed_rows_and_sorts_by_the_verifiers_probability(recorded):
    from facesynth.review.gallery import Gallery

    gallery = Gallery(recorded)
    table = rows(recorded, ["sample_id", "emotion", "verified_emotion", "verified_emotion_probability"])
    disputed = {r["sample_id"] for r in table if r["emotion"] != r["verified_emotion"]}
    chosen = gallery.select({"verifier": "disagrees"}, "verified_emotion_probability", descending=False)
    assert {gallery.sample_ids[i] for i in chosen} == disputed
    agreed = gallery.select({"verifier": "agrees"})
    assert len(agreed) + len(chosen) == len(table)
    for value in range(4):  # sorted within each primary label, lowest probability first
        probs = [gallery.scores["verified_emotion_probability"][i] for i in chosen if gallery.labels["emotion"][i] == value]
        assert probs == sorted(probs)
    tile = gallery.summary(int(chosen[0]))
    assert tile["verified_emotion"] in [*VALUES, "other"] and tile["verified_emotion"] != tile["emotion"]
    assert "verified_emotion_probability" in gallery.config()["sorts"] and gallery.config()["verified"] == ["emotion"]
    with pytest.raises(ValueError, match="verifier: must be disagrees or agrees"):
        gallery.select({"verifier": "maybe"})
    pytest.importorskip("starlette", reason="the review extra (starlette, uvicorn) is not installed")
    from facesynth.review.server import ReviewServer
    from conftest import get

    server = ReviewServer(recorded, 0).start()
    try:  # what the page asks for: disputed rows, least convincing first
        status, _, body = get(server.url + "api/rows?verifier=disagrees&sort=verified_emotion_probability&order=asc")
        assert status == 200
        served = json.loads(body)["rows"]
        assert [r["sample_id"] for r in served] == [gallery.sample_ids[i] for i in chosen]
        assert all(r["verified_emotion"] != r["emotion"] for r in served)
        status, _, body = get(server.url + "api/rows?verifier=maybe")
        assert status == 400 and "verifier: must be disagrees or agrees" in json.loads(body)["error"]
    finally:
        server.stop()


@pytest.mark.slow
def test_a_zero_shot_verifier_records_and_reproduces(tmp_path):
    from facesynth.generation import GenerateConfig, generate
    from facesynth.folder.public import public_manifest
    from facesynth.reproduce import reproduce
    from facesynth.folder.writer import Manifest

    clip = clip_folder(tmp_path / "clip")
    out = tmp_path / "zs"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=8, model="tiny", quiet=True,
                            verify=(f"ethnicity=zero-shot:{clip}",), verify_mode="record"))
    table = rows(out, ["verified_ethnicity", "verified_ethnicity_probability"])
    assert all(0 <= r["verified_ethnicity"] < 7 and 0 < r["verified_ethnicity_probability"] < 1 for r in table)
    result = reproduce(out, "emotions-0000001")
    assert result.identical and not result.verifier_differs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verifiers"][0]["kind"] == "zero-shot"
    public = json.dumps(public_manifest(Manifest(manifest)))
    assert str(tmp_path) not in public  # local folders are published by name only
    card = (out / "README.md").read_text()
    assert re.search(r"Verifier: <code>.*clip</code> \(zero-shot CLIP", card)


# Local verifiers are pinned by content ---------------------------------------------------------
def _swap_classes(folder):
    """Edit the classifier's config.json: its first two class names swap places (the weights stay)."""
    import json

    config = json.loads((folder / "config.json").read_text())
    names = config["id2label"]
    names["0"], names["1"] = names["1"], names["0"]
    config["label2id"] = {v: int(k) for k, v in names.items()}
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.slow
def test_a_changed_local_verifier_is_refused_on_resume_grow_and_reproduce_naming_the_file(
        classifier, tmp_path, monkeypatch, capsys):
    """Grow after editing the verifier's config.json: one line naming the file, nothing changed; the same through a
    link that now points elsewhere; reproduce from another working directory finds the folder by its recorded
    path, says the changed file differs, and says "no such folder" (never a Hub lookup) once it is gone."""
    from facesynth.errors import ModelError
    from facesynth.reproduce import reproduce

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(classifier, work / "vit")
    (work / "link").symlink_to(work / "vit")
    monkeypatch.chdir(work)
    base = ["generate", "emotions", "--model", "tiny", "--out", "out", "-q", "--rows-per-shard", "4",
            "--verify", f"emotion=./link,{LABELS}"]
    assert invoke([*base, "-n", "8"]) == 0
    before = shard_bytes(work / "out")
    assert invoke([*base[:-1], f"emotion=link,{LABELS}", "-n", "8"]) == 0  # ./link and link are one folder
    shutil.copytree(classifier, work / "other")
    _swap_classes(work / "other")
    (work / "link").unlink()
    (work / "link").symlink_to(work / "other")  # the link now points at another classifier
    capsys.readouterr()
    for size in ("8", "12"):  # resume and grow
        assert invoke([*base, "-n", size]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "config.json differs" in err and "verify.emotion" in err, err
        assert "num_samples" not in err
    assert shard_bytes(work / "out") == before
    (work / "link").unlink()
    (work / "link").symlink_to(work / "vit")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the recorded path resolves from anywhere
    assert reproduce(work / "out", "emotions-0000001").identical
    _swap_classes(work / "vit")
    with pytest.raises(ModelError, match=r"changed since the dataset was made: config.json differs"):
        reproduce(work / "out", "emotions-0000001")
    shutil.rmtree(work / "vit")
    with pytest.raises(ModelError, match=r"verifiers \(emotion\): no such folder '.*/work/vit'"):
        reproduce(work / "out", "emotions-0000001")


def test_a_local_verifier_that_is_not_there_is_no_such_folder_never_a_hub_id(tmp_path, capsys):
    capsys.readouterr()
    for name in ("./gone", "../gone", "a/b/gone", "~/gone-facesynth"):
        code = invoke(["generate", "emotions", "--model", "tiny", "-n", "8", "--out", str(tmp_path / "o"), "-q",
                       "--verify", f"emotion={name}"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err == f"Error: --verify emotion: no such folder '{name}'", err
    assert not (tmp_path / "o").exists()


def _variant(classifier, folder, processor=None, config=None):
    """A copy of the classifier with keys of its preprocessor_config.json or config.json replaced."""
    import json

    shutil.copytree(classifier, folder)
    for name, changes in (("preprocessor_config.json", processor), ("config.json", config)):
        if changes:
            data = json.loads((folder / name).read_text())
            data.update(changes)
            (folder / name).write_text(json.dumps(data))
    return folder


PROCESSORS = [
    ({"size": {"height": 64, "width": 64}}, "its preprocessor_config.json does not fit the model ("),
    ({"size": {"height": 0, "width": 32}}, "preprocessor_config.json: size.height: 0 is not a size in pixels"),
    ({"size": {"height": -32, "width": 32}}, "preprocessor_config.json: size.height: -32 is not a size in pixels"),
    ({"size": {"height": "abc", "width": 32}}, "preprocessor_config.json: size.height: 'abc' is not a size in pixels"),
    ({"size": {"shortest_edge": 0}}, "preprocessor_config.json: size.shortest_edge: 0 is not a size in pixels"),
    ({"image_mean": [0.5, 0.5]}, "preprocessor_config.json: image_mean: [0.5, 0.5] is not 3 finite numbers"),
    ({"image_std": [0.5, 0, 0.5]}, "preprocessor_config.json: image_std: [0.5, 0.0, 0.5] holds 0"),
]


@pytest.mark.parametrize("changes, why", PROCESSORS, ids=[f"processor{i}" for i in range(len(PROCESSORS))])
def test_a_verifier_processor_that_cannot_work_is_one_line_before_the_generator(
        classifier, tmp_path, capsys, monkeypatch, changes, why):
    from facesynth.generation import loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the generator was loaded"))
    bad = _variant(classifier, tmp_path / "bad", processor=changes)
    capsys.readouterr()
    out = tmp_path / "out"
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "8", "--out", str(out), "-q", "--verify",
                   f"emotion={bad},{LABELS}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"Error: --verify emotion: '{bad}': {why}"), err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_verifiers_that_are_not_what_they_are_given_as_are_one_line(classifier, tmp_path, capsys, monkeypatch):
    from facesynth.generation import loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the generator was loaded"))
    custom = _variant(classifier, tmp_path / "custom", config={"auto_map": {"AutoModel": "x.MyModel"}})
    cases = [
        (f"emotion={custom},{LABELS}", f"--verify emotion: '{custom}' needs its own code (config.json has auto_map); "
                                       "facesynth never runs a model's own code (trust_remote_code)"),
        (f"emotion=zero-shot:{classifier}", f"--verify emotion: '{classifier}' is not a CLIP-family model "
                                            "(architectures: ViTForImageClassification); zero-shot needs one; give a "
                                            "classifier as emotion=MODEL instead"),
        ("emotion=zero-shot:", "--verify: 'emotion=zero-shot:' names no model after 'zero-shot:' "
                               "(ATTRIBUTE=zero-shot:CLIP_MODEL)"),
        (f"emotion={classifier}/model.safetensors", f"--verify emotion: '{classifier}/model.safetensors' is a file; "
                                                    "give the model's folder (its config.json and weights)"),
    ]
    for option, line in cases:
        capsys.readouterr()
        assert invoke(["generate", "emotions", "--model", "tiny", "-n", "8", "--out", str(tmp_path / "o"), "-q",
                       "--verify", option]) == 2
        assert capsys.readouterr().err.strip() == f"Error: {line}"
    capsys.readouterr()
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "8", "--out", str(tmp_path / "o"), "-q",
                   "--verify", f"emotion={classifier},{LABELS}", "--verify", "emotion=zero-shot:x/y"]) == 2
    assert capsys.readouterr().err.strip() == ("Error: --verify: 'emotion' is given twice; give one verifier per "
                                               "attribute")
    assert not (tmp_path / "o").exists()
