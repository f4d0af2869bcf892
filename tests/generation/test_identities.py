"""Identity sets on the tiny preset: the plan's sets and splits, shared attention (off at strength 0, measurably
closer with it), best-of-N and refills per set, the identity embedder and its gate, review, reproduce, resume and
the card's Identity section."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from conftest import crash_at_shard, identity_recipe, invoke, make_engine, reject, rows, shard_bytes, tiny_onnx_embedder
from facesynth.errors import PlanError, RecipeError
from facesynth.plan import Plan, balance_report
from facesynth.recipe import load_recipe, parse_recipe, with_identities


def sets_recipe(**identities):
    return with_identities(load_recipe("emotions"), {"vary": ["emotion"], **identities})


# The plan ------------------------------------------------------------------------------------
def test_a_set_holds_every_varied_value_once_with_the_fixed_labels_of_one_identity_in_one_split():
    plan = Plan(sets_recipe(), 400)
    sets = defaultdict(list)
    for s in plan.samples:
        sets[s.identity].append(s)
    assert len(sets) == 100
    for identity, members in sets.items():
        assert [m.labels["emotion"] for m in members] == ["happy", "sad", "angry", "surprised"]
        assert len({(m.labels["gender"], m.labels["ethnicity"], m.split) for m in members}) == 1
        assert [m.member for m in members] == [0, 1, 2, 3] and {m.reference for m in members} == {members[0].sample_id}
        assert len({m.seeds for m in members}) == 1  # a set starts from one identity's noise
    report = balance_report(plan)
    assert report["sets"] == ["emotion"] and report["axis"] <= 1  # fixed attributes within 1 over identities


@pytest.mark.parametrize("size", [8, 40, 200, 1000])
def test_splits_are_identity_disjoint_and_prefix_stable_at_every_size(size):
    small, large = Plan(sets_recipe(), size), Plan(sets_recipe(), 1000)
    assert [s.split for s in small.samples] == [s.split for s in large.samples[:size]]
    assert all(len({s.split for s in ms}) == 1 for ms in _by_identity(small.samples).values())
    counts = Counter(s.split for s in large.samples if s.member == 0)
    assert counts == {"train": 200, "validation": 25, "test": 25}  # 8/1/1 of the 250 identities


def _by_identity(samples):
    out = defaultdict(list)
    for s in samples:
        out[s.identity].append(s)
    return out


def test_pairs_vary_one_attribute_and_several_varied_attributes_give_every_combination():
    pairs = Plan(sets_recipe(vary=["gender"]), 8)
    assert [(s.labels["gender"], s.member) for s in pairs.samples[:2]] == [("male", 0), ("female", 1)]
    both = Plan(sets_recipe(vary=["emotion", "gender"]), 16)
    assert len(_by_identity(both.samples)) == 2 and all(len(m) == 8 for m in _by_identity(both.samples).values())


def test_bad_identity_sets_are_one_line():
    with pytest.raises(PlanError, match=r"--num-samples: 30 is not a whole number of identity sets of 4 rows "
                                        r"\(emotion\); use 28 or 32"):
        Plan(sets_recipe(), 30)
    with pytest.raises(RecipeError, match=r"--identities: 'mood' is not an attribute"):
        with_identities(load_recipe("emotions"), {"vary": ["mood"]}, "--identities")
    with pytest.raises(RecipeError, match=r"'gender' is fixed by balance.strata.0"):
        with_identities(load_recipe("agfd"), {"vary": ["gender"]}, "--identities")
    with pytest.raises(RecipeError, match=r"x.yaml: identities: mechanism: 'edit' is not built yet"):
        parse_recipe(identity_recipe(mechanism="edit"), "x.yaml")
    import yaml

    own = yaml.safe_load(identity_recipe())
    own["attributes"]["emotion"]["values"]["happy"] = {"phrases": ["smiling"], "generation": {"guidance": 9}}
    with pytest.raises(RecipeError, match=r"x.yaml: identities.vary: the values of 'emotion' set their own generation "
                                          r"settings \(happy: \{'guidance': 9.0\}\); a set is denoised in one call"):
        parse_recipe(yaml.safe_dump(own), "x.yaml")


def test_bad_identity_options_on_the_command_line_are_one_line_and_write_nothing(tmp_path, capsys):
    cases = [
        (["emotions", "--identities", "mood"], "Error: --identities: 'mood' is not an attribute (emotion, gender, "
                                                "ethnicity)"),
        (["emotions", "--identities", "emotion", "-n", "30"],
         "Error: --num-samples: 30 is not a whole number of identity sets of 4 rows (emotion); use 28 or 32"),
        (["agfd", "--identities", "gender"], "Error: --identities: 'gender' is fixed by balance.strata.0"),
        (["emotions_flux", "--identities", "emotion", "--model", "tiny-sd3", "-n", "8"],
         "Error: identities.mechanism: shared-attention is built for the UNet families"),
    ]
    for args, line in cases:
        capsys.readouterr()
        code = invoke(["generate", *args, "--out", str(tmp_path / "o"), "-q", *(["--model", "tiny"] if "--model"
                                                                                 not in args else [])])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith(line), err
        assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


# Shared attention ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engines(tiny_pipe, tiny_scorer):
    def make(**identities):
        recipe = sets_recipe(**identities) if identities.pop("sets", True) else load_recipe("emotions")
        return make_engine(tiny_pipe, tiny_scorer, recipe)
    return make


def test_at_strength_0_a_member_is_pixel_for_pixel_its_independent_generation(engines):
    samples = Plan(sets_recipe(), 8).samples[:4]
    shared = engines(strength=0.0).candidates(samples, 0)
    alone = engines(sets=False).candidates(samples, 0)  # the same seeds and prompts, no set machinery
    for a, b in zip(shared, alone):
        assert np.array_equal(a.pixels, b.pixels)


def test_with_shared_attention_members_are_closer_to_their_reference(engines):
    """Over three master seeds and every set, each member's pixels lie closer to its reference's (the same
    candidate) with sharing on than at strength 0."""
    def distance(scored):
        ref = scored[0].pixels.astype(np.float64)
        return np.mean([np.abs(m.pixels.astype(np.float64) - ref).mean() for m in scored[1:]])

    for seed in (0, 1, 2):
        samples = Plan(sets_recipe(), 8, seed=seed).samples[:4]
        off = distance(engines(strength=0.0).candidates(samples, 0))
        on = distance(engines(strength=3.0).candidates(samples, 0))
        assert on < off, (seed, on, off)


# Runs -----------------------------------------------------------------------------------------
def _make(out, n=16, **extra):
    from facesynth.generation import GenerateConfig, generate

    recipe = out.parent / "sets.yaml"
    if not recipe.exists():
        recipe.write_text(identity_recipe(**extra.pop("identities", {})))
    return generate(GenerateConfig(recipe=str(recipe), out=out, num_samples=n, model="tiny", quiet=True,
                                   rows_per_shard=4, **extra))


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return tiny_onnx_embedder(tmp_path_factory.mktemp("embedder") / "detail.onnx", detail=True)


def reachable(tiny_pipe, tiny_scorer, embedder, samples) -> float:
    """A similarity gate every set of ``samples`` can pass at its first attempt: the least, over the sets, of
    their best candidate's weakest member (at guidance 50, where the tiny model's members differ measurably)."""
    from facesynth.checks.identity import load_embedder
    from facesynth.tiny import TINY_SETTINGS

    engine = make_engine(tiny_pipe, tiny_scorer, sets_recipe(embedder=str(embedder)))
    engine.options.overrides = {**TINY_SETTINGS, "guidance": 50}
    engine.embedder = load_embedder(str(embedder), None, engine.device)
    scored = engine.candidates(samples, 0)
    sets = defaultdict(list)
    for s in scored:
        if s.sample.member:
            sets[s.sample.identity].append(s.similarity)
    return min(float(np.min(sims, axis=0).max()) for sims in sets.values())


@pytest.fixture(scope="module")
def gated(tmp_path_factory, embedder, tiny_pipe, tiny_scorer):
    """16 rows with a similarity gate every set can pass, a little below the least best candidate set."""
    gate = reachable(tiny_pipe, tiny_scorer, embedder, Plan(sets_recipe(), 16).samples) - 1e-4
    out = tmp_path_factory.mktemp("gated") / "out"
    _make(out, identities={"embedder": str(embedder), "min_similarity": gate}, guidance=50)
    return out


def test_the_similarity_gate_passes_over_a_better_scoring_set_whose_member_is_not_alike(
        tiny_pipe, tiny_scorer, embedder):
    """Among seeds, a set whose best-scoring candidate has a member below the gate: the gate keeps another
    candidate set, counts the rejection (reason identity), and every kept member is at least the gate."""
    from facesynth.checks.identity import load_embedder
    from facesynth.tiny import TINY_SETTINGS

    for seed in range(6):
        samples = Plan(sets_recipe(), 8, seed=seed).samples
        gate = reachable(tiny_pipe, tiny_scorer, embedder, samples)
        engine = make_engine(tiny_pipe, tiny_scorer, sets_recipe(embedder=str(embedder), min_similarity=gate))
        engine.options.overrides = {**TINY_SETTINGS, "guidance": 50}
        engine.embedder = load_embedder(str(embedder), None, engine.device)
        winners = engine.run_batch(samples)
        if sum(w.tally.rejected.get("identity", 0) for w in winners):
            break
    else:
        pytest.fail("no seed gave a set whose best-scoring candidate failed the gate")
    assert all(w.identity_similarity >= gate for w in winners)
    assert all(w.attempt == 0 for w in winners)  # every set had a passing candidate at its first attempt


def test_a_gated_run_keeps_whole_sets_at_or_above_the_gate_and_every_quota_exact(gated):
    table = rows(gated, ["sample_id", "identity", "reference", "emotion", "identity_similarity", "attempt", "seed",
                         "identity_embedding"])
    sets = defaultdict(list)
    for r in table:
        sets[r["identity"]].append(r)
    assert len(sets) == 4 and all(len(m) == 4 for m in sets.values())
    assert all(len({(r["attempt"], r["seed"]) for r in m}) == 1 for m in sets.values())
    manifest = json.loads((gated / "manifest.json").read_text())
    gate = manifest["plan"]["identities"]["min_similarity"]
    assert all(r["identity_similarity"] >= gate and len(r["identity_embedding"]) == 768 for r in table)
    assert manifest["identity_embedder"]["kind"] == "onnx" and manifest["parameters"]["inputs"]["identities.embedder"]
    from facesynth.validate import validate

    assert validate(gated, images=False).ok


def test_the_card_shows_the_identity_section_and_a_picture_of_sets(gated):
    card = (gated / "README.md").read_text()
    assert "## Identity" in card and "4 synthetic people, each in 4 rows, one per value of emotion" in card
    assert "| genuine: a member and its reference | 12 |" in card
    assert "identity-disjoint" in card and "![A few identity sets" in card
    listed = json.loads((gated / "manifest.json").read_text())["files"]
    assert "assets/identities.png" in listed and (gated / "assets" / "identities.png").is_file()


def test_a_member_reproduces_from_its_set_and_loading_filters_and_iterates_sets(gated):
    import facesynth
    from facesynth.reproduce import reproduce

    assert reproduce(gated, "emotions-0000006").identical
    one = facesynth.load(str(gated), split="train", identity="emotions-id0000000")
    assert sorted(one["sample_id"]) == [f"emotions-{i:07d}" for i in range(4)]
    sets = list(facesynth.iter_sets(facesynth.load(str(gated), split="train"), ["emotion"]))
    assert all([r["emotion"] for r in members] == [0, 1, 2, 3] for members in sets)


def test_rejecting_one_member_in_review_makes_its_whole_set_again(gated, tmp_path):
    import shutil

    from facesynth.validate import validate

    out = tmp_path / "out"
    shutil.copytree(gated, out)
    (tmp_path / "sets.yaml").write_text((gated.parent / "sets.yaml").read_text())
    before = {r["sample_id"]: r["attempt"] for r in rows(out, ["sample_id", "attempt"])}
    reject(out, ["emotions-0000001"], "eyes")
    _make(out, guidance=50)
    after = {r["sample_id"]: r["attempt"] for r in rows(out, ["sample_id", "attempt"])}
    changed = sorted(s for s in after if after[s] != before[s])
    assert changed == [f"emotions-{i:07d}" for i in range(4)]  # the whole set, at its next attempt
    assert validate(out, images=False).ok
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["review"]["reasons"] == {"eyes": 1, "made again with its identity set": 3}


@pytest.mark.slow
def test_a_crash_mid_run_resumes_to_the_same_bytes(tmp_path):
    whole, cut = tmp_path / "a" / "out", tmp_path / "b" / "out"
    whole.parent.mkdir()
    cut.parent.mkdir()
    _make(whole, n=32)
    with crash_at_shard(3):
        _make(cut, n=32)
    _make(cut, n=32)
    assert shard_bytes(cut) == shard_bytes(whole)


def test_an_embedder_that_is_not_an_image_model_is_one_line(tmp_path, capsys):
    flat = tiny_onnx_embedder(tmp_path / "flat.onnx", channels=1)
    (tmp_path / "sets.yaml").write_text(identity_recipe(embedder=str(flat)))
    capsys.readouterr()
    assert invoke(["generate", str(tmp_path / "sets.yaml"), "--model", "tiny", "-n", "8", "--out",
                   str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"Error: identities.embedder: '{flat}' is not an image model (its input is ['batch', 1, 32, 32]; "
                   "an embedder takes one N x 3 x H x W image batch of a fixed size)"), err
    assert not (tmp_path / "o").exists()


# The reference mechanism (IP-Adapter) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from conftest import tiny_ip_adapter

    return tiny_ip_adapter(tmp_path_factory.mktemp("ipa") / "face-adapter")


def _engine_with_adapter(tiny_scorer, adapter, scale):
    from facesynth.generation.families import family_of
    from facesynth.generation.loading import load_pipeline
    from facesynth.generation.reference import load

    recipe = sets_recipe(mechanism="reference", adapter=str(adapter), adapter_scale=scale)
    pipe, _ = load_pipeline("tiny")
    load(pipe, recipe.identities, family_of(pipe))
    return make_engine(pipe, tiny_scorer, recipe)


def test_the_reference_mechanism_makes_references_alone_and_conditions_members_on_them(
        tiny_pipe, tiny_scorer, adapter):
    """References are made as they would be alone (the adapter at scale 0); the other members change with the
    adapter's scale, conditioned on their reference's image, and start from the same noise."""
    samples = Plan(sets_recipe(), 8).samples[:4]
    alone = engines_free(tiny_pipe, tiny_scorer).candidates(samples, 0)
    weak = _engine_with_adapter(tiny_scorer, adapter, 0.0).candidates(samples, 0)
    strong = _engine_with_adapter(tiny_scorer, adapter, 2.0).candidates(samples, 0)
    assert np.array_equal(weak[0].pixels, alone[0].pixels) and np.array_equal(strong[0].pixels, alone[0].pixels)
    for w, s in zip(weak[1:], strong[1:]):
        assert np.abs(w.pixels.astype(int) - s.pixels.astype(int)).max() > 0


def engines_free(tiny_pipe, tiny_scorer):
    from facesynth.generation.loading import load_pipeline

    return make_engine(load_pipeline("tiny")[0], tiny_scorer, load_recipe("emotions"))  # as fresh as the others


def test_a_reference_run_records_the_adapter_reproduces_and_validates(tmp_path, adapter):
    from facesynth.reproduce import reproduce
    from facesynth.validate import validate

    out = tmp_path / "out"
    _make(out, n=8, identities={"mechanism": "reference", "adapter": str(adapter), "adapter_scale": 2.0})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity_adapter"]["file"] == "ip-adapter.safetensors"
    assert "identities.adapter" in manifest["parameters"]["inputs"]
    assert reproduce(out, "emotions-0000002").identical and validate(out, images=False).ok
    assert "conditioned on the reference's image through the IP-Adapter" in (out / "README.md").read_text()


def test_bad_reference_adapters_are_one_line_and_write_nothing(tmp_path, capsys, adapter):
    import shutil

    from conftest import tiny_ip_adapter

    wide = tiny_ip_adapter(tmp_path / "wide", wide=True)
    bare = tmp_path / "bare"
    shutil.copytree(adapter, bare)
    shutil.rmtree(bare / "image_encoder")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "ip-adapter.bin").write_bytes(b"\x80\x04")
    cases = [
        ({"adapter": str(wide)}, [], "Error: identities.adapter: 'wide' does not fit the model ("),
        ({"adapter": str(bare)}, [], f"Error: identities.adapter: '{bare}' has no image_encoder/ with safetensors"),
        ({"adapter": str(pickled)}, [], f"Error: identities.adapter: '{pickled}' holds 0 safetensors files (none)"),
        ({"adapter": str(adapter)}, ["--prune-at", "0.5", "--keep", "1"],
         "Error: --prune-at/--keep: not with identities.mechanism reference"),
    ]
    for k, (spec, extra, line) in enumerate(cases):
        recipe = tmp_path / f"r{k}.yaml"
        recipe.write_text(identity_recipe(mechanism="reference", **spec))
        capsys.readouterr()
        code = invoke(["generate", str(recipe), "--model", "tiny", "-n", "8", "--out", str(tmp_path / "o"), "-q",
                       *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith(line.replace("'wide'", f"'{wide}'")), err
        assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()
