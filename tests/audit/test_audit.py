"""facesynth audit: per-group figures (equal to fairlearn's and scikit-learn's on the same predictions), a planted
bias found and an unbiased classifier cleared, counterfactual flips on gender pairs, the card, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import invoke

import cues

ARGS = dict(min_group=5, progress=False)


@pytest.fixture(scope="module")
def cue_data(tmp_path_factory):
    """The cue dataset (24 test rows: 12 gender pairs), a biased and an unbiased classifier, and both audits."""
    from facesynth.audit import audit

    work = tmp_path_factory.mktemp("audit")
    root = cues.make(work)
    models = {name: cues.classifier(work / name, biased=name == "biased") for name in ("biased", "fair")}
    reports = {name: audit(root, str(path), out=work / f"report-{name}", **ARGS) for name, path in models.items()}
    return {"root": root, "work": work, "models": models, "reports": reports}


def test_a_planted_bias_is_found_and_a_fair_classifier_is_cleared(cue_data):
    biased, fair = cue_data["reports"]["biased"], cue_data["reports"]["fair"]
    by_gender = biased["groups"]["gender"]
    assert by_gender["groups"]["female"]["accuracy"] == 0.5 and by_gender["groups"]["male"]["accuracy"] == 1.0
    assert by_gender["difference"] == 0.5 and by_gender["difference_ci"][0] > 0.1 and by_gender["ratio"] == 0.5
    assert by_gender["ranked"] == ["female", "male"]
    assert by_gender["groups"]["female"]["recall"] == {"happy": 0.0, "sad": 1.0}
    assert by_gender["equalized_odds_difference"] == 1.0
    assert biased["groups"]["age"]["difference"] == 0.0  # age carries no cue
    flips = biased["counterfactual"]["attributes"]["gender"]
    assert flips["pairs"] == 12 and flips["flip_rate"] == 0.5 and flips["flip_ci"][0] > 0.1
    assert flips["mean_change"] > 0.3
    assert fair["overall"]["accuracy"] == 1.0
    assert fair["groups"]["gender"]["difference"] == 0.0 and fair["groups"]["gender x age"]["difference"] == 0.0
    assert fair["counterfactual"]["attributes"]["gender"]["flip_rate"] == 0.0
    assert fair["counterfactual"]["attributes"]["gender"]["mean_change"] < 0.05


def test_every_figure_equals_fairlearn_and_scikit_learn_on_the_predictions(cue_data):
    from fairlearn.metrics import (MetricFrame, demographic_parity_difference, equalized_odds_difference)
    from sklearn.metrics import accuracy_score, confusion_matrix, recall_score

    for name, result in cue_data["reports"].items():
        frame = pd.read_parquet(cue_data["work"] / f"report-{name}" / "predictions.parquet")
        assert len(frame) == result["data"]["rows"] == 24
        y, p = frame["emotion"], frame["predicted"]
        assert result["overall"]["accuracy"] == pytest.approx(accuracy_score(y, p))
        assert result["overall"]["confusion"] == confusion_matrix(y, p, labels=["happy", "sad", "other"])[:2].tolist()
        for grouping, figures in result["groups"].items():
            by = grouping.split(" x ")
            keys = frame[by].astype(str).agg(" / ".join, axis=1)
            mf = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=p, sensitive_features=keys)
            for key, accuracy in mf.by_group.items():
                group = figures["groups"][key]
                rows = frame[keys == key]
                assert group["rows"] == len(rows) and group["accuracy"] == pytest.approx(accuracy)
                lo, hi = group["accuracy_ci"]
                assert lo <= accuracy <= hi
                for value in ("happy", "sad"):
                    expected = recall_score(rows["emotion"], rows["predicted"], labels=[value], average="macro",
                                            zero_division=np.nan)
                    assert group["recall"][value] == pytest.approx(expected, nan_ok=True)
                assert group["confusion"] == confusion_matrix(rows["emotion"], rows["predicted"],
                                                              labels=["happy", "sad", "other"])[:2].tolist()
            assert figures["difference"] == pytest.approx(mf.difference())
            assert figures["ratio"] == pytest.approx(mf.ratio())
            truth, guess = (y == "sad").astype(int), (p == "sad").astype(int)
            assert figures["equalized_odds_difference"] == pytest.approx(
                equalized_odds_difference(truth, guess, sensitive_features=keys))
            assert figures["demographic_parity_difference"] == pytest.approx(
                demographic_parity_difference(truth, guess, sensitive_features=keys))
        pairs = frame.pivot(index="identity", columns="gender", values="predicted")
        flips = result["counterfactual"]["attributes"]["gender"]
        assert flips["flip_rate"] == pytest.approx((pairs["male"] != pairs["female"]).mean())


def test_predictions_hold_every_row_of_the_split_with_its_attributes_and_probabilities(cue_data):
    import pyarrow.parquet as pq

    table = pq.read_table(cue_data["work"] / "report-fair" / "predictions.parquet")
    assert table.column_names == ["sample_id", "identity", "reference", "emotion", "gender", "age", "predicted",
                                  "p_happy", "p_sad", "p_other"]
    held = {r["sample_id"]: r["identity"] for f in sorted(cue_data["root"].glob("data/*/test-*.parquet"))
            for r in pq.read_table(f, columns=["sample_id", "identity"]).to_pylist()}
    assert sorted(table["sample_id"].to_pylist()) == sorted(held)
    assert [held[s] for s in table["sample_id"].to_pylist()] == table["identity"].to_pylist()
    probabilities = np.stack([table[c].to_numpy() for c in ("p_happy", "p_sad", "p_other")], 1)
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert table["p_other"].to_numpy().max() == 0  # both classes map to a value


def test_the_same_data_and_model_give_the_same_bytes_and_intervals_follow_the_seed(cue_data, tmp_path):
    from facesynth.audit import audit

    first = cue_data["work"] / "report-biased"
    again = audit(cue_data["root"], str(cue_data["models"]["biased"]), out=tmp_path / "again", **ARGS)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    assert {"audit.json", "audit.md", "predictions.parquet", "confusion.png", "accuracy-gender.png"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    other = audit(cue_data["root"], str(cue_data["models"]["biased"]), out=tmp_path / "seed1", seed=1, **ARGS)
    assert other["groups"]["gender"]["difference"] == again["groups"]["gender"]["difference"]
    assert intervals(other) != intervals(again)  # resampled from another stream (a coarse one: 12 rows a group)
    assert intervals(audit(cue_data["root"], str(cue_data["models"]["biased"]), out=tmp_path / "seed1-again", seed=1,
                           **ARGS)) == intervals(other)


def intervals(result) -> list:
    """Every bootstrap interval of an audit's figures, in order."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_ci") or key == "ci":
                    found.append(value)
                else:
                    walk(value)
    walk(result)
    return found


def test_classes_map_by_name_or_with_map_and_an_unmapped_value_is_named(cue_data, tmp_path, capsys):
    from facesynth.audit import audit

    renamed = cues.classifier(tmp_path / "renamed", biased=True, classes=("joy", "sorrow"))
    out = tmp_path / "report"
    capsys.readouterr()
    assert invoke(["audit", str(cue_data["root"]), "--model", str(renamed), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("Error: --model: no class of the model maps to 'happy', 'sad' (classes: joy, sorrow); map one "
                   "with --map CLASS=happy")
    assert not out.exists()
    mapped = audit(cue_data["root"], str(renamed), mapping={"joy": "happy", "sorrow": "sad"}, out=out, **ARGS)
    assert mapped["classifier"]["labels"] == {"joy": "happy", "sorrow": "sad"}
    same = pd.read_parquet(cue_data["work"] / "report-biased" / "predictions.parquet")
    assert pd.read_parquet(out / "predictions.parquet")["predicted"].tolist() == same["predicted"].tolist()


def test_the_command_prints_the_figures_and_writes_the_report(cue_data, tmp_path, capsys):
    out = tmp_path / "report"
    capsys.readouterr()
    assert invoke(["audit", str(cue_data["root"]), "--model", str(cue_data["models"]["biased"]), "--out", str(out),
                   "--min-group", "5", "--rounds", "200", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("emotion accuracy 75.0% (") and lines[0].endswith("on 24 rows of test")
    assert lines[1].startswith("  by gender: largest difference 50.0% (") and lines[1].endswith("lowest female")
    assert lines[3].startswith("  flip rate when only gender changes: 50.0% (") and lines[3].endswith("12 pairs)")
    assert lines[-1] == f"wrote {out / 'audit.md'}"
    text = (out / "audit.md").read_text()
    assert "synthetic, not photographs of people" in text and "![gender](accuracy-gender.png)" in text
    assert "| female | 12 | 50.0% |" in text and "| gender | 12 | 50.0% |" in text
    assert json.loads((out / "audit.json").read_text())["settings"]["rounds"] == 200


def test_the_card_gets_an_audit_section_and_the_manifest_lists_the_report(cue_data, tmp_path, capsys):
    from huggingface_hub import DatasetCard

    from facesynth.validate import validate

    root = tmp_path / "cues"
    shutil.copytree(cue_data["root"], root)
    assert invoke(["card", str(root)]) == 0  # the card of the painted shards, before the audit
    before = (root / "README.md").read_text()
    assert invoke(["audit", str(root), "--model", str(cue_data["models"]["biased"]), "--min-group", "5", "--card",
                   "-q"]) == 0
    manifest = json.loads((root / "manifest.json").read_text())
    assert {"audit/audit.json", "audit/audit.md", "audit/predictions.parquet"} <= set(manifest["files"])
    assert manifest["audit"]["model"] == "biased" and manifest["audit"]["sha256"]
    after = (root / "README.md").read_text()
    head, section = after.split("## Audit\n")
    section, tail = section.split("## Usage\n")
    assert head + "## Usage\n" + tail == before  # the rest of the card untouched
    assert section.startswith(f"\n{manifest['audit']['date']}: the image classifier <code>biased</code> (sha256 "
                              f"<code>{manifest['audit']['sha256'][:12]}</code>) predicted emotion on the 24 rows of "
                              "the test split. These faces are synthetic, not photographs of people: a gap measured "
                              "here is a reason to look at the classifier on real data, not a verdict about it.")
    assert ("The largest difference between groups is by gender: 50.0 points (25.0–75.0) between female (lowest) and "
            "male (highest)") in section and "gender flips the prediction in 50.0% of 12 pairs" in section
    assert "![audit/accuracy-gender.png](audit/accuracy-gender.png)" in section
    assert DatasetCard.load(root / "README.md").data.configs  # the YAML header still parses
    assert [str(p) for p in validate(root, images=False).problems] == []


BAD = [
    (["--attribute", "mood"], "Error: --attribute: 'mood' is not an attribute of the dataset (emotion, gender, age)"),
    (["--split", "validation"], "Error: --split: 'validation' is not a split of '{root}' (train, test)"),
    (["--map", "joy"], "Error: --map: 'joy' is not CLASS=VALUE"),
    (["--map", "happy=joyful"], "Error: --model: labels: 'joyful' is not a value of emotion (happy, sad)"),
    (["--model", "{remote}"], "Error: --model: '{remote}' needs its own code (config.json has auto_map); facesynth "
                              "never runs a model's own code (trust_remote_code)"),
    (["--model", "{pickled}"], "Error: --model: '{pickled}' has no safetensors weights; facesynth loads no pickled "
                               "weights"),
    (["--model", "{clip}"], "Error: --model: '{clip}' is not an image classifier (architectures: CLIPModel)"),
    (["--card", "--out", "{out}"], "Error: --out: with --card the report goes into the dataset folder ({root}/audit)"),
]


@pytest.mark.parametrize("args, line", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cue_data, tmp_path, capsys, args, line):
    from conftest import other_clip, pickled_classifier, tiny_classifier

    sys_path = tmp_path
    paths = {"root": cue_data["root"], "out": sys_path / "out", "clip": sys_path / "clip",
             "remote": sys_path / "remote", "pickled": sys_path / "pickled"}
    if "{clip}" in args:
        other_clip(paths["clip"])
    if "{remote}" in args:
        tiny_classifier(paths["remote"], classes=("happy", "sad"))
        config = json.loads((paths["remote"] / "config.json").read_text())
        (paths["remote"] / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Model"}}))
    if "{pickled}" in args:
        pickled_classifier(paths["pickled"])
    model = [] if "--model" in args else ["--model", str(cue_data["models"]["fair"])]
    out = [] if "--out" in args else ["--out", str(paths["out"])]
    listing = sorted(p.relative_to(cue_data["root"]) for p in cue_data["root"].rglob("*"))
    capsys.readouterr()
    code = invoke(["audit", str(cue_data["root"]), *model, *out, *(a.format(**paths) for a in args), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith(line.format(**paths)), err
    assert len(err.splitlines()) <= 2 and "Traceback" not in err
    assert not paths["out"].exists()
    assert sorted(p.relative_to(cue_data["root"]) for p in cue_data["root"].rglob("*")) == listing


def test_a_folder_that_is_not_a_finished_dataset_and_counterfactuals_without_sets_are_refused(
        cue_data, demo_dataset, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(cue_data["root"], unfinished)
    manifest = json.loads((unfinished / "manifest.json").read_text())
    (unfinished / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    empty = tmp_path / "empty"
    empty.mkdir()
    model = str(cue_data["models"]["fair"])
    cases = [
        ([str(unfinished)], f"Error: '{unfinished}': not a finished dataset; run the same generate command to finish "
                            "it, then audit"),
        ([str(empty)], f"Error: '{empty}'"),
        ([str(demo_dataset), "--counterfactual"], "Error: --counterfactual: this dataset has no identity sets; "
                                                  "counterfactual figures need rows made as sets (generate with "
                                                  "--identities ATTR, e.g. --identities gender for pairs)"),
    ]
    for args, line in cases:
        out = tmp_path / "out"
        capsys.readouterr()
        assert invoke(["audit", *args, "--model", model, "--out", str(out), "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(line) and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_a_dataset_without_sets_gets_group_figures_and_no_counterfactual(demo_dataset, tmp_path):
    from facesynth.audit import audit
    from conftest import tiny_classifier

    model = tiny_classifier(tmp_path / "clf", classes=("happy", "sad", "angry", "surprised"))
    result = audit(demo_dataset, str(model), out=tmp_path / "report", min_group=2, progress=False)
    assert result["counterfactual"] is None and result["data"]["rows"] == len(
        pd.read_parquet(tmp_path / "report" / "predictions.parquet"))
    assert set(result["groups"]) == {"gender", "ethnicity", "gender x ethnicity"}
    small = [g for g in result["groups"]["gender x ethnicity"]["groups"].values() if g["small"]]
    assert small and all(g["recall"] is None for g in small)
    assert "(small)" in (tmp_path / "report" / "audit.md").read_text()


@pytest.mark.slow
def test_memory_stays_flat_from_1000_to_10000_rows(cue_data, tmp_path):
    import resource
    import subprocess
    import sys

    peaks = {}
    for rows in (1000, 10000):
        data = cues.replicate(cue_data["root"], tmp_path / f"rows{rows}", rows)
        script = ("import resource, sys; from facesynth.audit import audit; "
                  f"r = audit(sys.argv[1], sys.argv[2], out=sys.argv[3], progress=False); assert r['data']['rows'] == {rows}; "
                  "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        done = subprocess.run([sys.executable, "-c", script, str(data), str(cue_data["models"]["fair"]),
                               str(tmp_path / f"report{rows}")], capture_output=True, text=True, check=True)
        peaks[rows] = int(done.stdout.split()[-1]) / 1024
    assert resource  # the children report their own peak
    assert peaks[10000] < peaks[1000] + 150, peaks  # MB: ten times the rows, not ten times the memory


@pytest.mark.slow
def test_validate_and_the_card_notice_an_audit_older_than_the_data(demo_copy, tmp_path):
    from huggingface_hub import DatasetCard

    from conftest import tiny_classifier
    from facesynth.generation import GenerateConfig, generate
    from facesynth.validate import validate

    model = tiny_classifier(tmp_path / "clf", classes=("happy", "sad", "angry", "surprised"))
    assert invoke(["audit", str(demo_copy), "--model", str(model), "--min-group", "2", "--card", "-q"]) == 0
    assert [str(p) for p in validate(demo_copy, images=False).problems] == []
    generate(GenerateConfig(recipe="emotions", out=demo_copy, num_samples=32, model="tiny", quiet=True,
                            rows_per_shard=8, batch_size=12))
    problems = [str(p) for p in validate(demo_copy, images=False).problems]
    assert problems == ["audit/audit.json: older than the data (it audited 4 rows of version 1.0.0); run "
                        f"`facesynth audit {demo_copy} --model clf --card`"]
    assert "older than this version of the data" in DatasetCard.load(demo_copy / "README.md").text


def test_a_zero_shot_clip_audits_over_the_label_prompts(cue_data, tmp_path):
    from conftest import other_clip
    from facesynth.audit import audit

    clip = other_clip(tmp_path / "clip")
    result = audit(cue_data["root"], f"zero-shot:{clip}", attribute="gender", out=tmp_path / "report", **ARGS)
    assert result["classifier"]["kind"] == "zero-shot" and result["classifier"]["sha256"]
    frame = pd.read_parquet(tmp_path / "report" / "predictions.parquet")
    assert set(frame["predicted"]) <= {"male", "female"} and (frame["p_other"] == 0).all()
    assert np.allclose(frame["p_male"] + frame["p_female"], 1, atol=1e-5)
    assert set(result["groups"]) == {"emotion", "age", "emotion x age"}
    assert "gender" not in result["counterfactual"]["attributes"]  # gender is the audited attribute, and varied
    assert result["counterfactual"]["per_identity"]["identities"] == 12
