"""The engine and the runner, on the tiny preset, offline, on CPU."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from conftest import cache_repo, crash_at_shard, make_engine
from facesynth.errors import ModelError, OutputError
from facesynth.generation import GenerateConfig, generate
from facesynth.generation.loading import SCHEDULERS, load_pipeline, make_scheduler
from facesynth.plan import Plan
from facesynth.recipe import SCHEDULER_NAMES
from facesynth.folder.schema import features


def test_deterministic(tiny_pipe, tiny_scorer, emotions):
    samples = Plan(emotions, 3).samples
    a = make_engine(tiny_pipe, tiny_scorer, emotions).run_batch(samples)
    b = make_engine(tiny_pipe, tiny_scorer, emotions).run_batch(samples)
    for x, y in zip(a, b):
        assert np.array_equal(x.pixels, y.pixels)
        assert x.seed == y.seed and x.candidate_scores == y.candidate_scores


@pytest.mark.slow
def test_batch_invariance(tiny_pipe, tiny_scorer, emotions):
    samples = Plan(emotions, 4).samples
    engine = make_engine(tiny_pipe, tiny_scorer, emotions)
    together = engine.run_batch(samples)
    for sample, win in zip(samples, together):
        alone = engine.run_batch([sample])[0]
        assert alone.candidate_index == win.candidate_index and alone.seed == win.seed
        diff = np.abs(alone.pixels.astype(int) - win.pixels.astype(int))
        assert diff.max() <= 2, diff.max()
        assert np.allclose(alone.candidate_scores, win.candidate_scores, atol=1e-3)


def test_rerank_keeps_the_argmax_of_independent_clip_scores(tiny_pipe, tiny_scorer, emotions):
    sample = Plan(emotions, 1).samples[0]
    engine = make_engine(tiny_pipe, tiny_scorer, emotions)
    win = engine.run_batch([sample])[0]
    # score every candidate again, one pipeline call each, outside the engine
    scores = []
    cond = engine.encoder.encode(sample.prompt, sample.negative_prompt)
    for seed in sample.candidate_seeds(3):
        latents = tiny_pipe(prompt_embeds=cond.embeds, negative_prompt_embeds=cond.negative, num_inference_steps=4,
                            width=64, height=64, guidance_scale=7.5, output_type="latent",
                            generator=torch.Generator("cpu").manual_seed(seed)).images
        img = engine.decode(latents)
        sim = tiny_scorer.similarity(tiny_scorer.image_embeddings(img), tiny_scorer.text_embeddings([sample.caption]))
        scores.append(float(sim[0]))
    assert np.allclose(scores, win.candidate_scores, atol=1e-3)
    assert win.candidate_index == int(np.argmax(scores))
    assert win.seed == sample.candidate_seeds(3)[win.candidate_index]
    assert win.clip_score == pytest.approx(max(0.0, max(scores)), abs=1e-3)


@pytest.mark.slow
def test_label_confidence_retries_with_fresh_seeds(tiny_pipe, tiny_scorer, emotions):
    samples = Plan(emotions, 2).samples
    strict = make_engine(tiny_pipe, tiny_scorer, emotions, min_label_confidence=0.99, max_attempts=3)
    wins = strict.run_batch(samples)
    per_attempt = [make_engine(tiny_pipe, tiny_scorer, emotions).generate(samples, a) for a in range(3)]
    for i, win in enumerate(wins):
        confidences = [per_attempt[a][i].label_confidence for a in range(3)]
        assert win.attempt == int(np.argmax(confidences))  # the best attempt is kept, the quota stays full
        assert win.seed in win.sample.candidate_seeds(3, win.attempt)
    lenient = make_engine(tiny_pipe, tiny_scorer, emotions, min_label_confidence=0.0)
    assert all(w.attempt == 0 for w in lenient.run_batch(samples))


@pytest.mark.parametrize("name", [n for n in SCHEDULER_NAMES if n != "default"])
def test_every_named_scheduler_runs(name, tiny_pipe, tiny_scorer, emotions):
    assert set(SCHEDULERS) == set(SCHEDULER_NAMES) - {"default"}
    engine = make_engine(tiny_pipe, tiny_scorer, emotions)
    engine.options.overrides.update(scheduler=name, steps=2)
    win = engine.run_batch(Plan(emotions, 1).samples)[0]
    assert win.pixels.shape == (64, 64, 3) and win.settings["scheduler"] == name
    assert type(make_scheduler(name, tiny_pipe.scheduler.config)).__name__ == SCHEDULERS[name][0]


def test_missing_model_is_one_clear_line():
    with pytest.raises(ModelError) as err:
        load_pipeline("nobody/no-such-model")
    msg = str(err.value)
    assert msg.startswith("--model: cannot load 'nobody/no-such-model'") and "--model tiny" in msg
    assert "\n" not in msg


def test_pickle_checkpoints_are_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(ModelError, match="only .safetensors checkpoints"):
        load_pipeline(str(ckpt))


# Runner ------------------------------------------------------------------------------
def test_dataset_schema_features_and_row_groups(demo_dataset, emotions):
    manifest = json.loads((demo_dataset / "manifest.json").read_text())
    assert manifest["complete"] and manifest["plan"]["num_samples"] == 24
    assert manifest["model"]["name"] == "tiny" and manifest["clip_model"]["name"] == "tiny"
    assert {"torch", "diffusers", "transformers", "datasets"} <= set(manifest["versions"])
    files = sorted((demo_dataset / "data").glob("*/*.parquet"))
    assert [f.relative_to(demo_dataset).as_posix() for f in files] == sorted(manifest["shards"])
    expected = features(emotions)
    names = expected["emotion"].names
    for f in files:
        pf = pq.ParquetFile(f)
        from datasets import Features
        assert Features.from_arrow_schema(pf.schema_arrow) == expected
        assert b"content_defined_chunking" in pf.metadata.metadata
        labels = pq.read_table(f, columns=["emotion"])["emotion"].to_pylist()
        start = 0
        for i in range(pf.metadata.num_row_groups):  # each row group holds one primary label
            n = pf.metadata.row_group(i).num_rows
            assert len(set(labels[start:start + n])) == 1
            start += n
        import hashlib
        assert hashlib.sha256(f.read_bytes()).hexdigest() == manifest["shards"][f.relative_to(demo_dataset).as_posix()]["sha256"]
        assert set(labels) == {names.index(f.parent.name)}  # one folder per primary label
    assert not list((demo_dataset / ".facesynth" / "tmp").glob("*"))


def test_rows_match_the_plan(demo_dataset, emotions):
    import datasets

    ds = datasets.concatenate_datasets(list(datasets.load_dataset(str(demo_dataset)).values()))
    plan = {s.sample_id: s for s in Plan(emotions, 24, num_candidates=3).samples}
    assert sorted(ds["sample_id"]) == sorted(plan)
    names = ds.features["emotion"].names
    for row in ds.select_columns(["sample_id", "emotion", "prompt", "seed", "candidate_index", "steps", "width"]):
        s = plan[row["sample_id"]]
        assert names[row["emotion"]] == s.labels["emotion"] and row["prompt"] == s.prompt
        assert row["seed"] == s.seeds[row["candidate_index"]]
        assert row["steps"] == 4 and row["width"] == 64


def _rows(out):
    import datasets

    ds = datasets.load_dataset(str(out))
    return {split: sorted(((r["sample_id"], r["image"].tobytes(), r["clip_score"]) for r in d), key=lambda t: t[0])
            for split, d in ds.items()}


@pytest.mark.slow
def test_resume_after_a_crash_gives_the_same_dataset(tmp_path, demo_dataset):
    out = tmp_path / "crashy"
    cfg = GenerateConfig(recipe="emotions", out=out, num_samples=24, model="tiny", quiet=True, rows_per_shard=8,
                         write_card=False)
    with crash_at_shard(2):
        generate(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) == 1 and not manifest["complete"]
    assert len(list((out / "data").glob("*/*.parquet"))) == 1  # no partial shard in data/
    result = generate(cfg)
    assert result.shards_skipped == 1 and result.shards_written == len(manifest["layout"]) - 1 >= 2
    assert _rows(out) == _rows(demo_dataset)


def test_other_parameters_against_an_existing_folder_are_refused(demo_dataset, tmp_path):
    with pytest.raises(OutputError, match="holds a dataset made with different seed"):
        generate(GenerateConfig(recipe="emotions", out=demo_dataset, num_samples=24, model="tiny", seed=99,
                                rows_per_shard=8, quiet=True))
    (tmp_path / "stuff.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"is not empty \(stuff.txt\) and holds no facesynth manifest"):
        generate(GenerateConfig(recipe="emotions", out=tmp_path, num_samples=4, model="tiny", quiet=True))


@pytest.mark.slow
def test_overwrite_replaces(tmp_path):
    out = tmp_path / "ds"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=4, model="tiny", quiet=True, write_card=False))
    r = generate(GenerateConfig(recipe="emotions", out=out, num_samples=4, model="tiny", seed=5, quiet=True,
                                overwrite=True, write_card=False))
    assert r.shards_written >= 1
    assert json.loads((out / "manifest.json").read_text())["plan"]["seed"] == 5


def test_rerun_of_a_finished_dataset_does_nothing(demo_dataset):
    before = {p: p.stat().st_mtime_ns for p in (demo_dataset / "data").glob("*/*.parquet")}
    r = generate(GenerateConfig(recipe="emotions", out=demo_dataset, num_samples=24, model="tiny", quiet=True,
                                rows_per_shard=8, write_card=False))
    assert r.shards_written == 0 and r.shards_skipped == len(before)
    assert before == {p: p.stat().st_mtime_ns for p in (demo_dataset / "data").glob("*/*.parquet")}


def test_local_diffusers_folder_loads_through_from_pretrained(tiny_pipe, tmp_path):
    folder = tmp_path / "tiny-sd"
    tiny_pipe.save_pretrained(folder, safe_serialization=True)
    assert list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin"))
    pipe, info = load_pipeline(str(folder))
    assert info.kind == "folder" and info.architecture == "sd"
    for (_, a), (_, b) in zip(pipe.unet.state_dict().items(), tiny_pipe.unet.state_dict().items()):
        assert torch.equal(a, b)
    out = tmp_path / "ds"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=2, model=str(folder), clip_model="tiny",
                            steps=2, width=64, height=64, quiet=True, write_card=False))
    assert json.loads((out / "manifest.json").read_text())["model"]["kind"] == "folder"


def _config_folder(pipe, folder: Path) -> Path:
    """A diffusers folder with every config and the tokenizer, and no weights at all."""
    pipe.save_config(folder)
    for name in ("unet", "vae", "scheduler"):
        getattr(pipe, name).save_config(folder / name)
    pipe.text_encoder.config.save_pretrained(folder / "text_encoder")
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    return folder


def test_single_file_checkpoint_loads_offline_with_a_local_config_folder(tiny_pipe, tmp_path):
    """``--model m.safetensors --model-config DIR``: an original-layout checkpoint, no download (offline)."""
    from ldm_checkpoint import save_ldm_checkpoint

    from facesynth.cli import main

    ckpt = save_ldm_checkpoint(tiny_pipe, tmp_path / "tiny-sd.safetensors")
    config = _config_folder(tiny_pipe, tmp_path / "tiny-sd-config")
    assert not list(config.rglob("*.safetensors")) and os.environ["HF_HUB_OFFLINE"] == "1"
    pipe, info = load_pipeline(str(ckpt), config=str(config))
    assert info.kind == "file" and info.config == str(config.resolve()) and len(info.sha256) == 64
    for part in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(pipe, part).state_dict(), getattr(tiny_pipe, part).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

    folder = tmp_path / "tiny-sd"
    tiny_pipe.save_pretrained(folder, safe_serialization=True)
    common = ["-n", "2", "--clip-model", "tiny", "--steps", "2", "--width", "64",
              "--height", "64", "--quiet"]
    runs = {"file": ["--model", str(ckpt), "--model-config", str(config)], "folder": ["--model", str(folder)]}
    for name, args in runs.items():
        result = CliRunner().invoke(main, ["generate", "emotions", *args, "--out", str(tmp_path / name), *common])
        assert result.exit_code == 0, result.output
    images = {name: [pq.read_table(f)["image"].to_pylist() for f in sorted((tmp_path / name).rglob("*.parquet"))]
              for name in runs}
    assert images["file"] == images["folder"] and images["file"]  # the same model, the same pixels
    model = json.loads((tmp_path / "file" / "manifest.json").read_text())["model"]
    assert model["kind"] == "file" and model["config"] == str(config.resolve()) and model["sha256"] == info.sha256


def test_model_config_must_be_a_folder(tmp_path, tiny_pipe):
    from ldm_checkpoint import save_ldm_checkpoint

    ckpt = save_ldm_checkpoint(tiny_pipe, tmp_path / "m.safetensors")
    with pytest.raises(ModelError, match="^--model-config: .* is not a folder of diffusers configs$"):
        load_pipeline(str(ckpt), config=str(tmp_path / "missing"))


@pytest.mark.slow
def test_full_size_sd15_single_file_checkpoint_loads_offline(tmp_path):
    """The real SD 1.5 architecture (random weights, fp16 on disk, 1.7 GB) as one checkpoint, fully offline."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from ldm_checkpoint import save_ldm_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    from facesynth.tiny import build_tokenizer

    configs = Path(__file__).parents[2] / "benchmarks" / "configs" / "sd15"

    def load(name):
        return json.loads((configs / name).read_text())

    torch.manual_seed(0)
    source = StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_config(load("unet.json")), vae=AutoencoderKL.from_config(load("vae.json")),
        text_encoder=CLIPTextModel(CLIPTextConfig(**load("text_encoder.json"))), tokenizer=build_tokenizer(),
        scheduler=PNDMScheduler.from_config(load("scheduler.json")), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).to(dtype=torch.float16)
    ckpt = save_ldm_checkpoint(source, tmp_path / "sd15.safetensors")
    config = _config_folder(source, tmp_path / "sd15-config")
    assert ckpt.stat().st_size > 1.5e9
    pipe, info = load_pipeline(str(ckpt), config=str(config), dtype=torch.float32)
    assert info.kind == "file" and pipe.unet.config.cross_attention_dim == 768
    for part in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(pipe, part).state_dict(), getattr(source, part).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k].float()) for k in mine), part
    del source
    image = pipe("a face", num_inference_steps=1, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


@pytest.mark.slow
def test_growing_a_dataset_keeps_full_shards_and_bumps_the_version(tmp_path, demo_dataset):
    out = tmp_path / "grow"
    base = dict(recipe="emotions", model="tiny", quiet=True, rows_per_shard=8, batch_size=12)
    generate(GenerateConfig(out=out, num_samples=16, **base))
    v1 = json.loads((out / "manifest.json").read_text())
    assert v1["version"] == "1.0.0"
    full = [n for n, r in v1["shards"].items() if r["rows"] == 8]
    stamps = {n: ((out / n).stat().st_mtime_ns, (out / n).read_bytes()) for n in full}
    result = generate(GenerateConfig(out=out, num_samples=24, **base))
    v2 = json.loads((out / "manifest.json").read_text())
    assert v2["version"] == "1.1.0" and v2["previous"]["version"] == "1.0.0"
    assert all(((out / n).stat().st_mtime_ns, (out / n).read_bytes()) == stamps[n] for n in full)  # untouched
    assert result.shards_skipped >= len(full)
    reference = json.loads((demo_dataset / "manifest.json").read_text())["shards"]
    assert {n: r["sha256"] for n, r in v2["shards"].items()} == {n: r["sha256"] for n, r in reference.items()}
    card = (out / "README.md").read_text()
    assert "**Version 1.1.0** (grown from 1.0.0: 16 → 24 rows)" in card
    added = sum(v2["cells"].values()) - sum(v2["previous"]["cells"].values())
    assert f"## Changes since 1.0.0\n\n{added} rows added" in card and added == 8
    with pytest.raises(OutputError, match="made with 24 samples; a dataset can grow but not shrink"):
        generate(GenerateConfig(out=out, num_samples=8, **base))


@pytest.mark.slow
def test_the_clip_models_commit_is_recorded_and_reproduce_pins_it(tmp_path, monkeypatch):
    import huggingface_hub.constants
    from transformers import CLIPImageProcessorPil

    from facesynth import tiny
    from facesynth.reproduce import reproduce
    from facesynth.checks.scoring import ClipScorer

    def save(folder):
        model, tokenizer, pre = tiny.build_clip()
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        CLIPImageProcessorPil(size={"shortest_edge": pre["size"]}, crop_size={"height": pre["crop"], "width": pre["crop"]},
                              image_mean=pre["mean"], image_std=pre["std"]).save_pretrained(folder)

    commit = "c11bc0de" * 5
    cache_repo(tmp_path / "hub", "org/tiny-clip", commit, save)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    scorer = ClipScorer.load("org/tiny-clip")
    assert scorer.info.commit == commit and not list((tmp_path / "hub").rglob("*.bin"))
    out = tmp_path / "pinned"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=2, model="tiny", clip_model="org/tiny-clip",
                            quiet=True, write_card=False))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["clip_model"] == {"name": "org/tiny-clip", "commit": commit}
    row = pq.read_table(next((out / "data").glob("*/*.parquet"))).to_pylist()[0]
    result = reproduce(out, row["sample_id"])
    assert result.identical and result.clip_score == pytest.approx(row["clip_score"], abs=1e-6)
    with pytest.raises(ModelError, match="--clip-model: cannot load 'org/tiny-clip'"):
        ClipScorer.load("org/tiny-clip", revision="0" * 40)  # a commit the cache does not hold


def test_vae_decode_applies_latents_mean_and_std_where_the_vae_has_them():
    from facesynth.generation.families import family_of

    pipe, _ = load_pipeline("tiny")
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator("cpu").manual_seed(0))
    scale = pipe.vae.config.scaling_factor
    mean, std = [0.1, -0.2, 0.3, 0.0], [0.5, 1.5, 1.0, 2.0]
    pipe.vae.register_to_config(latents_mean=mean, latents_std=std)
    got = family_of(pipe).decode(pipe.vae, latents)
    shape = (1, 4, 1, 1)
    raw = latents * torch.tensor(std).view(shape) / scale + torch.tensor(mean).view(shape)
    with torch.no_grad():
        want = (pipe.vae.decode(raw, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(got, want, atol=1e-6)


def test_hub_models_download_only_what_runs(tiny_pipe, tmp_path, monkeypatch):
    """fp16 weights when running in fp16 and the repo has them; no safety checker or feature extractor."""
    import huggingface_hub.constants

    from facesynth.generation.loading import _download, _unused

    def save(variant):
        def write(folder):
            tiny_pipe.save_pretrained(folder, safe_serialization=True, variant=variant)
            index = json.loads((folder / "model_index.json").read_text())
            index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
            (folder / "model_index.json").write_text(json.dumps(index))
        return write

    cache_repo(tmp_path / "hub", "org/tiny-fp16", "f" * 40, save("fp16"))
    cache_repo(tmp_path / "hub", "org/tiny-fp32", "e" * 40, save(None))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    folder, variant = _download("org/tiny-fp16", None, torch.float16)
    assert variant == "fp16" and Path(folder).name == "f" * 40
    folder, variant = _download("org/tiny-fp32", None, torch.float16)
    assert variant is None  # no fp16 weights: the full-precision ones
    assert _unused(Path(folder)) == {"safety_checker": None, "feature_extractor": None, "image_encoder": None,
                                     "requires_safety_checker": False}
    pipe, info = load_pipeline("org/tiny-fp16", dtype=torch.float16)
    assert info.commit == "f" * 40 and pipe.unet.dtype == torch.float16 and pipe.safety_checker is None


@pytest.mark.parametrize("preset", ["lcm", "turbo"])
def test_a_few_step_preset_runs_no_unconditional_branch_and_says_the_negative_prompt_is_unused(
        preset, tmp_path, caplog):
    import json

    from facesynth.generation import GenerateConfig, generate
    from facesynth.recipe import PRESETS
    from facesynth.reproduce import reproduce

    out = tmp_path / preset
    with caplog.at_level("WARNING"):
        result = generate(GenerateConfig(recipe="emotions", out=out, num_samples=4, model="tiny", quiet=True,
                                         preset=preset))
    steps = PRESETS[preset]["steps"]
    assert result.timings["unet_images"] == 4 * 3 * steps  # one evaluation per image and step: no guidance
    assert "no unconditional branch runs for them, so their negative prompt is unused" in caplog.text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generation"]["preset"] == preset
    assert {k: manifest["parameters"]["overrides"][k] for k in PRESETS[preset]} == PRESETS[preset]
    card = (out / "README.md").read_text()
    assert f"(the `{preset}` few-step preset). Guidance is at most 1, so no unconditional branch ran" in card
    assert reproduce(out, "emotions-0000001").identical
    guided = generate(GenerateConfig(recipe="emotions", out=tmp_path / "guided", num_samples=4, model="tiny",
                                     quiet=True, steps=steps))
    assert guided.timings["unet_images"] == 2 * result.timings["unet_images"]


@pytest.mark.parametrize("args, line", [
    (["--preset", "turbo", "--prune-at", "0.5", "--keep", "1"],
     "Error: --prune-at: pruning at 0.5 of 1 step(s) would never run (it needs a whole step before the last); leave "
     "it out, or run more --steps"),
    (["--preset", "turbo", "--cfg-until", "0.5"],
     "Error: --cfg-until: guidance is 0, at most 1, so no unconditional branch runs for it to stop; leave it out"),
    (["--guidance", "1", "--cfg-until", "0.5"],
     "Error: --cfg-until: guidance is 1, at most 1, so no unconditional branch runs for it to stop; leave it out"),
    (["--steps", "2", "--cfg-until", "0.9"],
     "Error: --cfg-until: stopping guidance at 0.9 of 2 step(s) would never happen; leave it out, or run more --steps"),
])
def test_a_speed_up_that_would_never_run_is_refused_not_recorded(tmp_path, capsys, args, line):
    from conftest import invoke

    capsys.readouterr()
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "4", "--out", str(tmp_path / "x"), *args]) == 2
    assert capsys.readouterr().err.strip() == line
    assert not (tmp_path / "x").exists()


def test_the_tiny_model_line_names_the_steps_a_preset_runs(tmp_path, capsys):
    from conftest import invoke

    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "2", "--out", str(tmp_path / "x"), "--preset",
                   "turbo"]) == 0
    assert ("--model tiny: a random-weight test model, run at 64x64 with 1 step (--preset turbo) (the recipe asks "
            "for 512x512 with 25 steps)") in capsys.readouterr().out


def test_an_unknown_preset_is_one_line(tmp_path, capsys):
    from conftest import invoke

    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "4", "--out", str(tmp_path / "x"),
                   "--preset", "fastest"]) == 2
    assert "Invalid value for '--preset': 'fastest' is not one of 'lcm', 'tcd', 'lightning', 'turbo', 'hyper', 'schnell'" in \
        capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_preset_for_another_family_is_one_line_before_the_model_loads(tmp_path, capsys, tiny_pipe, monkeypatch):
    """SDXL-Lightning's preset on an SD 1.x model: refused from the model's header or model_index.json alone."""
    import json

    from conftest import invoke
    from facesynth.generation import loading

    folder = tmp_path / "sd-folder"
    tiny_pipe.save_pretrained(folder, safe_serialization=True)
    xl = tmp_path / "xl"
    xl.mkdir()
    (xl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert [loading.peek_architecture(m) for m in ("tiny", str(folder), str(xl), str(tmp_path / "none"))] == \
        ["sd", "sd", "sdxl", None]

    def no_generator(*a, **k):
        raise AssertionError("the generator was loaded")

    monkeypatch.setattr(loading, "load_pipeline", no_generator)
    for model in ("tiny", str(folder)):
        out = tmp_path / "out"
        capsys.readouterr()
        assert invoke(["generate", "emotions", "--model", model, "-n", "4", "--out", str(out),
                       "--preset", "lightning"]) == 2
        assert capsys.readouterr().err.strip() == (f"Error: --preset lightning: made for SDXL models; '{model}' is "
                                                   "an SD 1.x/2.x model")
        assert not out.exists()
