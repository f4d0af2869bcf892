"""Rows rejected in review are made again by the same generate command: exact quotas, the other
shards byte-identical, a new version, the card's report, validate and reproduce."""

import json
import shutil
from collections import Counter
from dataclasses import replace

import pytest
from datasets import load_dataset

from conftest import PAIR, TINY_THRESHOLD, crash_at_shard, invoke, reject, rows, shard_bytes
from facesynth.errors import OutputError
from facesynth.generation import GenerateConfig, generate
from facesynth.plan import Plan, derive_seed
from facesynth.recipe import load_recipe
from facesynth.reproduce import Reproducer


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "pair.yaml"
    path.write_text(PAIR)
    return str(path)


def config(recipe, out, **extra):
    """The same command every time: two labels, deduplication on (a gate to pass again), 3 rows a shard."""
    return GenerateConfig(recipe=recipe, out=out, num_samples=16, model="tiny", quiet=True, rows_per_shard=3,
                          batch_size=6, dedupe_threshold=TINY_THRESHOLD, **extra)


@pytest.fixture(scope="module")
def reviewed(pair_file, tmp_path_factory):
    """A finished dataset, and three rows rejected in review: two in one shard, one in another."""
    out = tmp_path_factory.mktemp("reviewed") / "pair"
    generate(config(pair_file, out))
    manifest = json.loads((out / "manifest.json").read_text())
    full = [n for n, r in manifest["shards"].items() if r["rows"] == 3]
    first = [r["sample_id"] for r in rows_of(out, full[0])]
    second = [r["sample_id"] for r in rows_of(out, full[-1])]
    reject(out, first[:2], "six fingers")
    reject(out, [second[1]], "smiling, labelled sad")
    return out, {full[0]: first[:2], full[-1]: [second[1]]}


def rows_of(out, shard):
    import pyarrow.parquet as pq

    return pq.read_table(out / shard).to_pylist()


def test_the_same_command_makes_exactly_the_rejected_rows_again(reviewed, pair_file, tmp_path, capsys):
    base, rejected = reviewed
    out = tmp_path / "pair"
    shutil.copytree(base, out)
    ids = {sid for sids in rejected.values() for sid in sids}
    before, old_rows = shard_bytes(out), {r["sample_id"]: r for r in rows(out)}
    assert invoke(["validate", str(out), "-q", "--no-images"]) == 1  # the rejected rows are still there
    assert capsys.readouterr().out.count("rejected in review") == 3

    result = generate(config(pair_file, out))
    assert result.replaced == 3 and result.shards_written == 2 and result.version == "1.1.0"
    after = shard_bytes(out)
    assert {n for n in before if before[n] != after[n]} == set(rejected)  # only the shards that held them
    assert set(after) == set(before)
    new_rows = {r["sample_id"]: r for r in rows(out)}
    for sid, old in old_rows.items():
        new = new_rows[sid]
        if sid not in ids:
            assert new == old  # every column of every other row, in the rewritten shards too
            continue
        assert new["attempt"] > old["attempt"] and new["seed"] != old["seed"]  # from old + 1 on, through the gates
        assert new["image"]["bytes"] != old["image"]["bytes"]
        assert {k: new[k] for k in ("emotion", "prompt", "caption")} == {k: old[k] for k in ("emotion", "prompt",
                                                                                          "caption")}
        manifest = json.loads((out / "manifest.json").read_text())
        assert new["seed"] == derive_seed(manifest["plan"]["seed"], sid, new["candidate_index"], new["attempt"])
        assert set(new["batch"].split()) <= ids  # made in a call of rejected samples only, so it can be run again
    for shard, sids in rejected.items():  # each row stays where it was
        assert [r["sample_id"] for r in rows_of(out, shard)] == [r["sample_id"] for r in rows_of(base, shard)]

    plan = Plan(load_recipe(pair_file), 16, None, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    planned = Counter((s.labels["emotion"], s.split) for s in plan.samples)
    split_of = {r["sample_id"]: record["split"] for name, record in manifest["shards"].items()
                for r in rows_of(out, name)}
    stored = Counter((["happy", "sad"][r["emotion"]], split_of[r["sample_id"]]) for r in new_rows.values())
    assert stored == planned  # exact quotas
    assert manifest["version"] == "1.1.0" and manifest["previous"]["version"] == "1.0.0"
    assert manifest["previous"]["replaced"] == 3 and manifest["complete"] and "reviewing" not in manifest
    assert manifest["review"]["rejected"] == 3 and manifest["review"]["pending"] == 0
    assert manifest["review"]["reasons"] == {"six fingers": 2, "smiling, labelled sad": 1}
    cells = Counter("/".join([["happy", "sad"][old_rows[s]["emotion"]]]) for s in ids)
    assert manifest["review"]["cells"] == dict(cells)
    review_total = sum(c["by_reason"].get("review", 0) for c in manifest["quality"]["cells"].values())
    assert review_total == 3 and manifest["quality"]["total"]["rows"] == 16

    card = (out / "README.md").read_text()
    assert "**Version 1.1.0** (3 rows of 1.0.0 rejected in review and made again)" in card
    assert "## Human review" in card and "| six fingers | 2 |" in card and "| smiling, labelled sad | 1 |" in card
    for cell, n in cells.items():
        assert f"| {cell} | {n} |" in card
    assert invoke(["validate", str(out), "-q"]) == 0

    reproducer = Reproducer(out)
    for sid in ids:
        assert reproducer.reproduce(new_rows[sid]).identical
    loaded = load_dataset(str(out))
    assert sum(len(split) for split in loaded.values()) == 16
    assert not set(loaded["train"]["sample_id"]) - set(new_rows)

    again = generate(config(pair_file, out))  # nothing left to do: no rewrite, no new version
    assert again.shards_written == 0 and again.replaced == 0 and again.version == "1.1.0"
    assert shard_bytes(out) == after


@pytest.mark.slow
def test_a_crash_while_rewriting_resumes_to_the_same_dataset(reviewed, pair_file, tmp_path):
    base, rejected = reviewed
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    shutil.copytree(base, straight)
    shutil.copytree(base, crashed)
    generate(config(pair_file, straight))
    with crash_at_shard(2):  # the second rewritten shard fails before it is kept
        generate(config(pair_file, crashed))
    halfway = json.loads((crashed / "manifest.json").read_text())
    assert not halfway["complete"] and halfway["reviewing"]["version"] == "1.1.0"
    assert (crashed / list(rejected)[-1]).read_bytes() == (base / list(rejected)[-1]).read_bytes()  # old one kept
    assert sorted(halfway["reviewing"]["rejected"]) == sorted(s for ids in rejected.values() for s in ids)
    result = generate(config(pair_file, crashed))
    # the round's count, whichever run finished it: the CLI line, previous.replaced and the card agree
    assert result.replaced == 3 and result.version == "1.1.0"
    assert shard_bytes(crashed) == shard_bytes(straight)
    done = json.loads((crashed / "manifest.json").read_text())
    uninterrupted = json.loads((straight / "manifest.json").read_text())
    assert done["previous"] == uninterrupted["previous"] and done["previous"]["replaced"] == 3
    assert done["review"] == uninterrupted["review"] and done["attempts"] == uninterrupted["attempts"]
    assert "reviewing" not in done and done["version"] == "1.1.0"


@pytest.mark.slow
def test_a_row_rejected_twice_moves_on_to_yet_another_attempt(reviewed, pair_file, tmp_path):
    base, rejected = reviewed
    out = tmp_path / "pair"
    shutil.copytree(base, out)
    generate(config(pair_file, out))
    sid = next(iter(rejected.values()))[0]
    first = {r["sample_id"]: r for r in rows(out)}[sid]
    reject(out, [sid], "still wrong")
    result = generate(config(pair_file, out))
    second = {r["sample_id"]: r for r in rows(out)}[sid]
    assert result.replaced == 1 and result.version == "1.2.0"
    assert second["attempt"] > first["attempt"] and second["seed"] != first["seed"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["review"]["rejected"] == 4 and manifest["review"]["reasons"]["still wrong"] == 1


def test_a_restored_row_stays_and_workers_are_told_to_run_alone(reviewed, pair_file, tmp_path):
    base, rejected = reviewed
    out = tmp_path / "pair"
    shutil.copytree(base, out)
    restored = next(iter(rejected.values()))
    reject(out, restored, verdict="restore")
    with pytest.raises(OutputError, match="1 row\\(s\\) rejected in review are made again by a single process"):
        generate(config(pair_file, out, worker_index=0, num_workers=2))
    before = shard_bytes(out)
    result = generate(config(pair_file, out))
    assert result.replaced == 1
    changed = {n for n in before if before[n] != shard_bytes(out)[n]}
    assert changed == {list(rejected)[-1]}


def test_the_command_says_what_review_changed(reviewed, pair_file, tmp_path, capsys):
    base, _ = reviewed
    out = tmp_path / "pair"
    shutil.copytree(base, out)
    assert invoke(["generate", pair_file, "--out", str(out), "-n", "16", "--model", "tiny", "--rows-per-shard", "3",
                   "--batch-size", "6", "--dedupe-threshold", str(TINY_THRESHOLD), "-q"]) == 0
    said = capsys.readouterr().out
    assert "3 row(s) rejected in review were made again; version 1.1.0." in said
    gates = [line for line in said.splitlines() if line.startswith("Quality gates rejected")]
    assert all("review" not in line for line in gates)  # a person's rejections are not the gates'


def listing(out):
    """sha256 of every shard, by name: what 'the same bytes' means."""
    import hashlib

    return {name: hashlib.sha256(data).hexdigest() for name, data in shard_bytes(out).items()}


@pytest.mark.slow
def test_growing_a_reviewed_dataset_keeps_every_rows_attempt_killed_or_not(reviewed, pair_file, tmp_path):
    """After a review round, a grow never brings a rejected row back, and a grow killed and resumed gives the
    same bytes as an uninterrupted one."""
    from facesynth.validate import validate

    base, rejected = reviewed
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    shutil.copytree(base, straight)
    generate(config(pair_file, straight))  # the review round: 1.1.0
    moved = {r["sample_id"]: r["attempt"] for r in rows(straight, ["sample_id", "attempt"])
             if r["sample_id"] in {s for ids in rejected.values() for s in ids}}
    assert min(moved.values()) >= 1
    shutil.copytree(straight, crashed)
    generate(replace(config(pair_file, straight), num_samples=20, max_refills=40))
    grown = {r["sample_id"]: r["attempt"] for r in rows(straight, ["sample_id", "attempt"])}
    assert all(grown[sid] == attempt for sid, attempt in moved.items())  # not back at attempt 0
    report = validate(straight, images=False)
    assert report.ok, [str(p) for p in report.problems]
    with crash_at_shard(2):
        generate(replace(config(pair_file, crashed), num_samples=20, max_refills=40))
    generate(replace(config(pair_file, crashed), num_samples=20, max_refills=40))
    assert listing(crashed) == listing(straight)
    done, want = (json.loads((d / "manifest.json").read_text()) for d in (crashed, straight))
    assert done["version"] == want["version"] == "1.2.0" and done["attempts"] == want["attempts"]
    assert done["review"] == want["review"] and done["review"]["rejected"] == 3


@pytest.mark.slow
def test_repairing_a_shard_that_holds_a_pending_rejection_makes_it_at_its_next_attempt(reviewed, pair_file,
                                                                                       tmp_path):
    from facesynth.validate import validate

    base, rejected = reviewed
    straight, repaired = tmp_path / "straight", tmp_path / "repaired"
    shutil.copytree(base, straight)
    shutil.copytree(base, repaired)
    shard = list(rejected)[0]
    (repaired / shard).unlink()  # lost before the round ran
    result = generate(config(pair_file, repaired, repair=True))
    assert result.replaced == 3 and result.version == "1.1.0"  # the 2 in the lost shard, and the other one
    again = {r["sample_id"]: r["attempt"] for r in rows(repaired, ["sample_id", "attempt"])}
    assert all(again[sid] >= 1 for sid in rejected[shard])  # not the rejected image at attempt 0
    report = validate(repaired, images=False)
    assert report.ok, [str(p) for p in report.problems]
    generate(config(pair_file, straight))
    assert listing(repaired) == listing(straight)  # the same bytes as a round on the undamaged folder


def test_a_verdict_naming_another_rows_image_is_not_counted(reviewed, pair_file, tmp_path):
    from facesynth.review.verdicts import Verdict, append_verdicts

    base, rejected = reviewed
    out = tmp_path / "pair"
    shutil.copytree(base, out)
    other = next(r["sample_id"] for r in rows(out, ["sample_id"]) if r["sample_id"] not in
                 {s for ids in rejected.values() for s in ids})
    append_verdicts(out, [Verdict(other, 0, "0123456789abcdef", "reject", "forged digest")])
    result = generate(config(pair_file, out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert result.replaced == 3 and manifest["review"]["rejected"] == 3 and manifest["previous"]["replaced"] == 3
    assert "forged digest" not in manifest["review"]["reasons"]
    assert {r["sample_id"]: r["attempt"] for r in rows(out, ["sample_id", "attempt"])}[other] == 0


@pytest.mark.slow
def test_verdicts_posted_while_generate_runs_wait_for_the_next_round(reviewed, pair_file, tmp_path, capsys):
    """The round takes a snapshot when it starts: a restore and a reject posted mid-round (from another thread,
    as the gallery would) change nothing in it; the CLI line, the manifest and the card count the same 3 rows."""
    from facesynth.generation import runner

    base, rejected = reviewed
    out = tmp_path / "pair"
    shutil.copytree(base, out)
    ids = [s for ids_ in rejected.values() for s in ids_]
    late = next(r["sample_id"] for r in rows(out, ["sample_id"]) if r["sample_id"] not in ids)
    real, posted = runner.ShardSink._finish, []

    def finish(self):
        if not posted:  # the first rewritten shard is done: a reviewer acts now
            reject(out, [ids[-1]], verdict="restore")
            reject(out, [late], "posted during the round")
            posted.append(True)
        return real(self)

    runner.ShardSink._finish = finish
    try:
        assert invoke(["generate", pair_file, "--out", str(out), "-n", "16", "--model", "tiny", "--rows-per-shard",
                       "3", "--batch-size", "6", "--dedupe-threshold", str(TINY_THRESHOLD), "-q"]) == 0
    finally:
        runner.ShardSink._finish = real
    said = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    card = (out / "README.md").read_text()
    assert "3 row(s) rejected in review were made again; version 1.1.0." in said
    assert manifest["previous"]["replaced"] == 3 and manifest["review"]["rejected"] == 3
    assert manifest["review"]["pending"] == 1  # the late rejection waits for the next round
    assert "3 rows of 1.0.0 rejected in review and made again" in card and "1 more rejected rows" in card
    now = {r["sample_id"]: r["attempt"] for r in rows(out, ["sample_id", "attempt"])}
    assert now[late] == 0 and all(now[sid] >= 1 for sid in ids)
    result = generate(config(pair_file, out))  # the next round takes the late one
    assert result.replaced == 1 and result.version == "1.2.0"


def test_a_verdict_file_damaged_during_the_round_leaves_the_rounds_work_standing(reviewed, pair_file, tmp_path):
    """The round acts on its snapshot; a line damaged after it started is reported by validate, and the run
    still finishes its round (complete manifest, card) instead of failing at the end."""
    from facesynth.generation import runner
    from facesynth.validate import validate

    base, _ = reviewed
    out = tmp_path / "pair"
    shutil.copytree(base, out)
    real = runner.ShardSink._finish

    def finish(self):
        with open(out / "verdicts.jsonl", "a") as f:
            f.write("{not json\n")
        return real(self)

    runner.ShardSink._finish = finish
    try:
        result = generate(config(pair_file, out))
    finally:
        runner.ShardSink._finish = real
    manifest = json.loads((out / "manifest.json").read_text())
    assert result.replaced == 3 and manifest["complete"] and manifest["previous"]["replaced"] == 3
    problems = [str(p) for p in validate(out, images=False).problems]
    assert len(problems) == 1 and "verdicts.jsonl" in problems[0] and "not JSON" in problems[0]
