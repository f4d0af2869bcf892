"""Quality gates: the real Haar detector on a real photo, deduplication with the real (tiny)
CLIP, the safety screen, refills that keep quotas exact, resume, reproduction and reports."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import PAIR, TINY_THRESHOLD, crash_at_shard, make_engine, rows as _rows
from conftest import shard_bytes as _shard_bytes
from facesynth.cli import main
from facesynth.folder.state import cell_key
from facesynth.generation import GenerateConfig, generate
from facesynth.plan import Plan
from facesynth.checks.quality import (REASONS, DuplicateIndex, ExtraMissing, FaceDetector, QualityOptions, merge_boxes,
                               Tally, quality_report, require_cv2)
from facesynth.recipe import parse_recipe

cv2 = pytest.importorskip("cv2", reason="the faces extra (opencv-python-headless) is not installed")
skdata = pytest.importorskip("skimage.data", reason="scikit-image (test extra) is not installed")

@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture
def pair_recipe(tmp_path):
    path = tmp_path / "pair.yaml"
    path.write_text(PAIR)
    return str(path)


# Faces ------------------------------------------------------------------------------------
def test_detector_finds_the_one_face_on_the_astronaut(detector, astronaut):
    boxes = detector.detect(astronaut)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    # Eileen Collins' face lies in the upper middle of the 512x512 photo, left of the flag
    assert 150 < x + w / 2 < 300 and 60 < y + h / 2 < 180
    assert w >= 0.2 * 512 * 0.9  # at least the minimum size (the cascade's boxes are square)
    mirrored = detector.detect(astronaut[:, ::-1])
    assert len(mirrored) == 1 and abs((512 - mirrored[0][0] - mirrored[0][2]) - x) <= 8


def test_detector_finds_no_face_on_noise_or_an_object(detector):
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    assert detector.detect(noise) == []
    assert detector.detect(skdata.coffee()) == []
    assert detector.detect(np.full((256, 256, 3), 128, np.uint8)) == []


def test_two_faces_are_two_and_small_faces_do_not_count(astronaut):
    side_by_side = np.concatenate([astronaut, astronaut], axis=1)  # 512 x 1024: two people
    assert len(FaceDetector(min_face_size=0.15).detect(side_by_side)) == 2
    # the face is about 0.19 of the shorter side: a 0.3 minimum ignores it
    assert FaceDetector(min_face_size=0.3).detect(astronaut) == []


def test_overlapping_boxes_of_one_face_merge():
    assert merge_boxes([(10, 10, 100, 100), (15, 12, 90, 95), (300, 300, 80, 80)]) == [
        (10, 10, 100, 100), (300, 300, 80, 80)]


def test_face_gate_passes_over_a_better_scoring_candidate_without_a_face(tiny_pipe, tiny_scorer, emotions,
                                                                         astronaut):
    engine = make_engine(tiny_pipe, tiny_scorer, emotions, QualityOptions(faces=True), candidates=2)
    sample = Plan(emotions, 4, 0, 2).samples[0]
    scored = engine.candidates([sample], 0)[0]
    noise = np.random.default_rng(1).integers(0, 256, astronaut.shape, dtype=np.uint8)
    scored.pixels = np.stack([noise, astronaut])
    scored.embeddings = tiny_scorer.image_embeddings(
        torch.from_numpy(scored.pixels.copy()).permute(0, 3, 1, 2).float() / 255).numpy()
    scored.scores = np.array([30.0, 20.0], np.float32)  # the faceless one scores higher
    tally = Tally()
    win = engine._choose(scored, {}, tally)
    assert win.candidate_index == 1 and win.seed == scored.seeds[1]
    assert win.face_box == list(FaceDetector().detect(astronaut)[0])
    assert tally.checked == 2 and tally.rejected == Counter(no_face=1)


def test_faces_on_the_tiny_model_exhaust_refills_with_one_line(tmp_path):
    """The tiny model draws noise, never a face: the run stops, names the sample and keeps no partial shard."""
    out = tmp_path / "ds"
    result = CliRunner().invoke(main, ["generate", "emotions", "--model", "tiny", "-n", "8", "--out", str(out),
                                       "-q", "--faces", "--max-refills", "1", "--candidates", "2"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "no candidate passed the quality gates in 2 attempts (4 candidates: no_face 4)" in lines[0]
    assert "run the same command with a higher --max-refills to resume" in lines[0]
    assert "relax the gates" not in lines[0]
    assert not list(out.rglob("*.parquet"))  # neither a finished nor a partial shard
    # what the line advises works: the same command with a higher bound is this run, resumed (not refused)
    again = CliRunner().invoke(main, ["generate", "emotions", "--model", "tiny", "-n", "8", "--out", str(out),
                                      "-q", "--faces", "--max-refills", "2", "--candidates", "2"])
    assert again.exit_code == 1 and "in 3 attempts" in again.output and "different" not in again.output


def test_missing_opencv_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)  # as if the extra were not installed
    with pytest.raises(ExtraMissing, match=r"pip install 'facesynth\[faces\]'"):
        require_cv2()
    result = CliRunner().invoke(main, ["generate", "emotions", "--model", "tiny", "-n", "4", "--out",
                                       str(tmp_path / "x"), "--faces"])
    assert result.exit_code == 2
    assert result.output == ("Error: --faces: needs OpenCV, which is not installed; install it with "
                             "pip install 'facesynth[faces]'\n")
    assert not (tmp_path / "x").exists()


def test_gates_are_off_by_default_and_the_tiny_preset_does_not_dedupe(tmp_path, demo_dataset):
    manifest = json.loads((demo_dataset / "manifest.json").read_text())
    assert manifest["parameters"]["quality"] == {"faces": False, "min_face_size": None, "dedupe_threshold": None,
                                                 "safety": False, "safety_threshold": None}
    names = pq.read_schema(sorted(demo_dataset.glob("data/*/*.parquet"))[0]).names
    assert "face_box" not in names and "safety_score" not in names  # written only by the gates that measure them
    rows = _rows(demo_dataset, ["clip_embedding", "candidate_index", "candidate_scores"])
    assert all(r["candidate_index"] == int(np.argmax(r["candidate_scores"])) for r in rows)
    assert all(abs(np.linalg.norm(r["clip_embedding"]) - 1) < 1e-5 for r in rows)
    from facesynth.generation.config import DEFAULT_DEDUPE, quality_options

    real = quality_options(GenerateConfig(recipe="emotions", out=tmp_path), "some/model")
    assert real.dedupe_threshold == DEFAULT_DEDUPE == 0.95 and not real.faces and not real.safety
    off = quality_options(GenerateConfig(recipe="emotions", out=tmp_path, no_dedupe=True), "some/model")
    assert off.dedupe_threshold is None and not off.active


# Near-duplicates --------------------------------------------------------------------------
def _embed(scorer, images):
    batch = torch.stack([torch.from_numpy(np.array(x)).permute(2, 0, 1).float() / 255 for x in images])
    return scorer.image_embeddings(batch).numpy()


def test_dedupe_rejects_an_exact_copy_and_near_copies(tiny_scorer, astronaut):
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="JPEG", quality=80)
    jpeg = np.asarray(Image.open(buf).convert("RGB"))
    noisy = np.clip(astronaut.astype(int) + np.random.default_rng(0).integers(-8, 9, astronaut.shape), 0, 255)
    shifted = np.roll(astronaut, 4, axis=1)
    others = [np.asarray(Image.fromarray(img).resize((512, 512))) for img in
              (skdata.coffee(), skdata.chelsea(), skdata.rocket())]
    emb = _embed(tiny_scorer, [astronaut, astronaut.copy(), jpeg, noisy.astype(np.uint8), shifted, *others])
    index = DuplicateIndex(TINY_THRESHOLD)
    index.add("happy", emb[0])
    assert index.similarity("happy", emb[1]) == pytest.approx(1.0, abs=1e-6)
    for near in emb[1:5]:
        assert index.is_duplicate("happy", near)
    for other in emb[5:]:
        assert not index.is_duplicate("happy", other)
    assert not index.is_duplicate("sad", emb[1])  # another label cell has its own index
    assert index.is_duplicate("sad", emb[1], also=[emb[0]])  # rows chosen earlier in the same batch count


def test_dedupe_index_grows_and_searches_exactly():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(300, 16)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    index = DuplicateIndex(0.9)
    for r in rows:
        index.add("cell", r)
    assert len(index) == 300
    query = rng.normal(size=16).astype(np.float32)
    query /= np.linalg.norm(query)
    assert index.similarity("cell", query) == pytest.approx(float((rows @ query).max()), abs=1e-6)
    assert index.similarity("empty", query) == -1.0


def test_engine_refills_a_sample_whose_candidates_duplicate_a_kept_row(tiny_pipe, tiny_scorer, emotions):
    sample = Plan(emotions, 4, 0, 3).samples[0]
    first = make_engine(tiny_pipe, tiny_scorer, emotions).run_batch([sample])[0]
    engine = make_engine(tiny_pipe, tiny_scorer, emotions, QualityOptions(dedupe_threshold=0.9999))
    engine.gates.accept(cell_key(sample.labels), first.embedding)  # as if the first winner were already kept
    again = engine.run_batch([sample])[0]
    assert again.tally.rejected["duplicate"] >= 1
    assert (again.attempt, again.candidate_index) != (first.attempt, first.candidate_index)
    assert float(again.embedding @ first.embedding) <= 0.9999
    assert len(engine.gates.index) == 2  # the new winner joined the index


# Refill, resume, reproduce, report --------------------------------------------------------
@pytest.fixture(scope="module")
def deduped(tmp_path_factory):
    """A tiny two-cell dataset whose deduplication rejects and refills many candidates."""
    root = tmp_path_factory.mktemp("dedupe")
    recipe = root / "pair.yaml"
    recipe.write_text(PAIR)
    out = root / "ds"
    generate(GenerateConfig(recipe=str(recipe), out=out, num_samples=24, model="tiny", quiet=True,
                            rows_per_shard=6, dedupe_threshold=TINY_THRESHOLD, max_refills=30))
    return recipe, out


def test_refills_keep_every_quota_exact_and_no_cell_holds_a_near_duplicate(deduped):
    recipe_path, out = deduped
    recipe = parse_recipe(recipe_path.read_text(), str(recipe_path))
    plan = Plan(recipe, 24, None, 3)
    rows = _rows(out, ["sample_id", "emotion", "clip_embedding", "attempt"])
    assert sorted(r["sample_id"] for r in rows) == sorted(s.sample_id for s in plan.samples)
    names = recipe.attributes["emotion"].values
    assert Counter(list(names)[r["emotion"]] for r in rows) == Counter(s.labels["emotion"] for s in plan.samples)
    assert any(r["attempt"] > 0 for r in rows)  # some quotas were refilled with fresh seeds
    for label in range(len(names)):
        emb = np.array([r["clip_embedding"] for r in rows if r["emotion"] == label])
        sims = emb @ emb.T
        assert sims[np.triu_indices(len(emb), 1)].max() <= TINY_THRESHOLD
    from facesynth.validate import validate

    assert validate(out).problems == []


def test_rejections_are_counted_per_reason_and_cell_in_the_manifest_and_card(deduped):
    _, out = deduped
    manifest = json.loads((out / "manifest.json").read_text())
    report = quality_report(manifest["shards"])
    assert manifest["quality"] == report  # the summary kept in the manifest
    assert set(report["cells"]) == {"happy", "sad"}
    total = report["total"]
    assert total["rows"] == 24
    assert total["by_reason"]["duplicate"] == total["rejected"] > 0
    assert total["checked"] == total["rows"] + total["rejected"]  # every check either kept or rejected one
    assert sum(c["rejected"] for c in report["cells"].values()) == total["rejected"]
    rows = _rows(out, ["emotion", "label_confidence"])
    for value, cell in enumerate(("happy", "sad")):
        mine = [r["label_confidence"] for r in rows if r["emotion"] == value]
        assert report["cells"][cell]["label_confidence"] == pytest.approx(np.mean(mine), abs=1e-5)
    card = (out / "README.md").read_text()
    assert "## Quality gates" in card
    assert f"| happy | {report['cells']['happy']['rows']} | {report['cells']['happy']['checked']} |" in card
    assert f"{100 * total['rejection_rate']:.1f}%" in card


@pytest.mark.slow
def test_resume_with_dedupe_gives_the_same_dataset(deduped, tmp_path):
    recipe, out = deduped
    again = tmp_path / "again"
    cfg = GenerateConfig(recipe=str(recipe), out=again, num_samples=24, model="tiny", quiet=True,
                         rows_per_shard=6, dedupe_threshold=TINY_THRESHOLD, max_refills=30)
    with crash_at_shard(3):
        generate(cfg)
    assert len(list((again / "data").glob("*/*.parquet"))) == 2
    result = generate(cfg)
    assert result.shards_skipped == 2
    assert _shard_bytes(again) == _shard_bytes(out)
    assert json.loads((again / "manifest.json").read_text())["shards"] == \
        json.loads((out / "manifest.json").read_text())["shards"]


def test_a_refilled_row_reproduces_exactly(deduped):
    _, out = deduped
    from facesynth.reproduce import Reproducer

    rows = _rows(out, ["sample_id", "attempt", "candidate_index", "candidate_scores"])
    refilled = next(r for r in rows if r["attempt"] > 0)
    passed_over = [r for r in rows if r["candidate_index"] != int(np.argmax(r["candidate_scores"]))]
    reproducer = Reproducer(out, device="cpu")
    for row in [refilled, *passed_over[:1]]:
        full = reproducer.rows([row["sample_id"]])[row["sample_id"]]
        assert reproducer.reproduce(full).identical


@pytest.mark.slow
def test_generate_prints_what_the_gates_rejected(tmp_path, pair_recipe):
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["generate", pair_recipe, "--model", "tiny", "-n", "12", "--out", str(out),
                                       "-q", "--dedupe-threshold", str(TINY_THRESHOLD), "--max-refills", "30"])
    assert result.exit_code == 0, result.output
    total = json.loads((out / "manifest.json").read_text())["quality"]["total"]
    assert total["rejected"] > 0
    assert (f"Quality gates rejected {total['rejected']} of {total['checked']} candidates checked "
            f"(duplicate {total['rejected']}); {total['refills']} refills kept every quota.") in result.output


@pytest.mark.slow
def test_safety_screen_never_writes_a_flagged_candidate(tmp_path, pair_recipe, tiny_pipe, tiny_scorer):
    recipe = parse_recipe(open(pair_recipe).read(), pair_recipe)
    probe = make_engine(tiny_pipe, tiny_scorer, recipe, QualityOptions(safety=True))
    scored = probe.candidates(Plan(recipe, 12, None, 3).samples, 0)
    threshold = float(np.median(np.concatenate([s.unsafe for s in scored])))  # flags about half
    out = tmp_path / "safe"
    generate(GenerateConfig(recipe=pair_recipe, out=out, num_samples=12, model="tiny", quiet=True,
                            safety=True, safety_threshold=threshold, max_refills=20))
    rows = _rows(out, ["safety_score", "sample_id"])
    assert len(rows) == 12
    assert all(r["safety_score"] is not None and r["safety_score"] <= threshold for r in rows)
    report = quality_report(json.loads((out / "manifest.json").read_text())["shards"])
    assert report["total"]["by_reason"]["unsafe"] > 0
    assert set(report["total"]["by_reason"]) == set(REASONS)
    from facesynth.validate import validate

    assert validate(out).problems == []
    # validate holds every row to the run's threshold: a row above it is reported
    path = sorted((out / "data").glob("*/*.parquet"))[0]
    table = pq.read_table(path)
    scores = table["safety_score"].to_pylist()
    scores[0] = threshold + 0.01
    import pyarrow as pa

    pq.write_table(table.set_column(table.schema.get_field_index("safety_score"), "safety_score",
                                    pa.array(scores, pa.float32())), path)
    problems = [str(p) for p in validate(out).problems]
    sid = table["sample_id"][0].as_py()
    assert len(problems) >= 1
    assert any(f"{sid}: safety_score " in p and f"is above the run's threshold {threshold}" in p for p in problems)


@pytest.mark.parametrize("args, message", [
    (["--min-face-size", "0"], "Invalid value for '--min-face-size': 0.0 is not in the range 0<x<=1.\nTry 'facesynth generate -h' for help."),
    (["--dedupe-threshold", "1.5"], "Invalid value for '--dedupe-threshold': 1.5 is not in the range -1<=x<=1.\nTry 'facesynth generate -h' for help."),
    (["--dedupe-threshold", "0.9", "--no-dedupe"], "--no-dedupe and --dedupe-threshold: give one or the other"),
    (["--safety-threshold", "2"], "Invalid value for '--safety-threshold': 2.0 is not in the range 0<=x<=1.\nTry 'facesynth generate -h' for help."),
    (["--max-refills", "-1"], "Invalid value for '--max-refills': -1 is not in the range 0<=x<=1000.\nTry 'facesynth generate -h' for help."),
])
def test_bad_gate_options_are_one_line(args, message, tmp_path):
    result = CliRunner().invoke(main, ["generate", "emotions", "--model", "tiny", "-n", "4", "--out",
                                       str(tmp_path / "x"), *args], prog_name="facesynth")
    assert result.exit_code == 2
    assert result.output == f"Error: {message}\n"


def test_validate_holds_rows_to_the_face_gate_the_run_claims(deduped, tmp_path):
    import shutil

    from facesynth.validate import validate

    _, out = deduped
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["parameters"]["quality"]["faces"] = True  # as if the rows had passed --faces, but hold no face box
    from facesynth.folder.schema import features_of

    declared = features_of(parse_recipe(manifest["recipe"]["yaml"]), manifest).arrow_schema
    for name, record in manifest["shards"].items():
        table = pq.read_table(copy / name)
        columns = {c: table.column(c) if c in table.column_names else pa.nulls(table.num_rows, declared.field(c).type)
                   for c in declared.names}
        pq.write_table(pa.table(columns, schema=declared), copy / name)
        record["sha256"] = hashlib.sha256((copy / name).read_bytes()).hexdigest()
        record["bytes"] = (copy / name).stat().st_size
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems = [str(p) for p in validate(copy, images=False).problems]
    rows = [p for p in problems if "no face_box, but the run kept only rows with one face" in p]
    assert len(rows) == 24  # and the card, written for the run without faces, declares no face_box column:
    assert [p for p in problems if p not in rows] == [
        "README.md: YAML `dataset_info` (features, split sizes) disagrees with the data; run `facesynth card DIR`"]


def test_shard_embeddings_read_back_each_row_and_its_cell(deduped):
    from facesynth.checks.quality import shard_embeddings

    _, out = deduped
    path = sorted((out / "data").glob("*/*.parquet"))[0]
    rows = pq.read_table(path, columns=["emotion", "clip_embedding"]).to_pylist()
    read = list(shard_embeddings(path, {"emotion": ["happy", "sad"]}))
    assert [cell for cell, _ in read] == [("happy", "sad")[r["emotion"]] for r in rows]
    for (_, emb), row in zip(read, rows):
        assert emb.dtype == np.float32 and np.array_equal(emb, np.asarray(row["clip_embedding"], np.float32))


def test_quality_report_groups_cells_by_primary_label(demo_dataset):
    shards = json.loads((demo_dataset / "manifest.json").read_text())["shards"]
    per_cell = quality_report(shards)["cells"]
    grouped = quality_report(shards, group=lambda cell: cell.split("/")[0])["cells"]
    assert set(grouped) == {cell.split("/")[0] for cell in per_cell}
    for emotion, q in grouped.items():
        mine = [c for cell, c in per_cell.items() if cell.split("/")[0] == emotion]
        assert q["rows"] == sum(c["rows"] for c in mine) and q["checked"] == sum(c["checked"] for c in mine)
        weighted = sum(c["label_confidence"] * c["rows"] for c in mine) / q["rows"]
        assert q["label_confidence"] == pytest.approx(weighted, abs=1e-9)


# Non-finite candidates -------------------------------------------------------------------------
@pytest.fixture
def first_candidate_nan(monkeypatch):
    """Fault injection: the first candidate of every sample decodes to NaN, as a broken adapter makes it."""
    from facesynth.generation.engine import Engine

    decode = Engine.decode

    def nan_first(self, latents):
        images = decode(self, latents)
        images[:: self.options.candidates] = float("nan")
        return images

    monkeypatch.setattr(Engine, "decode", nan_first)


def test_a_non_finite_candidate_is_rejected_and_counted_never_kept(first_candidate_nan, tmp_path):
    out = tmp_path / "out"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=6, model="tiny", quiet=True, rows_per_shard=3))
    kept = _rows(out, ["candidate_index", "clip_score", "candidate_scores"])
    assert all(r["candidate_index"] != 0 and np.isfinite(r["clip_score"]) for r in kept)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quality"]["total"]["by_reason"]["non_finite"] == 6
    assert "6 candidates came out NaN or infinite (non_finite) and were never kept" in (out / "README.md").read_text()


def test_a_batch_with_no_finite_candidate_stops_in_one_line_and_leaves_no_folder(monkeypatch, tmp_path, capsys):
    from facesynth.generation.engine import Engine

    decode = Engine.decode
    monkeypatch.setattr(Engine, "decode", lambda self, latents: decode(self, latents) * float("inf"))
    out = tmp_path / "out"
    code = CliRunner().invoke(main, ["generate", "emotions", "--model", "tiny", "-n", "4", "--out", str(out), "-q"])
    assert code.exit_code == 2
    assert code.output.startswith("Error: the model made NaN or infinite images for all 12 candidates of a batch ")
    assert len(code.output.strip().splitlines()) == 1 and not out.exists()
