"""Candidate pruning and guidance truncation (``prune_at``/``keep``, ``cfg_until``), on the tiny preset."""

import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import check_pruning_and_truncation, make_engine
from facesynth.cli import main
from facesynth.generation.loading import make_scheduler
from facesynth.generation.steps import clean_prediction, preview_factor
from facesynth.plan import Plan
from facesynth.recipe import SCHEDULER_NAMES, switch_step


def _invoke(args):
    with pytest.raises(SystemExit) as exit_info:
        main.main(args=args, prog_name="facesynth")
    return exit_info.value.code


def _loop_length(engine) -> int:
    """Denoising iterations of the last call (PNDM runs one more than ``steps``)."""
    return len(engine.pipe.scheduler.timesteps)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_a_survivor_is_pixel_for_pixel_its_unpruned_trajectory(scheduler, tiny_pipe, tiny_scorer, emotions):
    samples = Plan(emotions, 4).samples
    full_engine = make_engine(tiny_pipe, tiny_scorer, emotions)
    full_engine.options.overrides["scheduler"] = scheduler
    full = full_engine.candidates(samples, 0)
    loop = _loop_length(full_engine)
    engine = make_engine(tiny_pipe, tiny_scorer, emotions)
    engine.options.overrides.update(scheduler=scheduler, prune_at=0.5, keep=2)
    pruned = engine.candidates(samples, 0)
    for f, p in zip(full, pruned):
        assert len(p.indices) == 2 and p.indices == sorted(p.indices) and p.total == 3
        assert p.seeds == [f.seeds[i] for i in p.indices]
        for k, index in enumerate(p.indices):
            assert np.array_equal(p.pixels[k], f.pixels[index])  # same seed, same noise, same steps
            assert p.scores[k] == pytest.approx(f.scores[index], abs=1e-5)
    # 12 images guided (x2) for 2 steps, then 8 for the rest, against 12 for every step
    assert full_engine.unet_images == 12 * 2 * loop
    assert engine.unet_images == 12 * 2 * 2 + 8 * 2 * (loop - 2)


def test_survivors_are_the_best_previews(tiny_pipe, tiny_scorer, emotions):
    """The kept candidate has the best CLIP score on its x0 prediction, derived here independently: DDIM
    (eta 0) moves along x_t = sqrt(a) x0 + sqrt(1 - a) eps, so two consecutive latents give x0."""
    samples = Plan(emotions, 4).samples
    engine = make_engine(tiny_pipe, tiny_scorer, emotions)
    engine.options.overrides.update(scheduler="ddim", prune_at=0.5, keep=1)
    pruned = engine.candidates(samples, 0)

    seen = {}

    def record(pipe, i, t, tensors):
        seen[i] = tensors["latents"].clone()
        return {}

    reference = make_engine(tiny_pipe, tiny_scorer, emotions)
    reference.options.overrides["scheduler"] = "ddim"
    settings = reference.settings_for(samples[0])
    tiny_pipe.scheduler = reference._scheduler("ddim")
    conds = [reference.encoder.encode(s.prompt, s.negative_prompt) for s in samples for _ in range(3)]
    with torch.inference_mode():
        tiny_pipe(prompt_embeds=torch.cat([c.embeds for c in conds]),
                  negative_prompt_embeds=torch.cat([c.negative for c in conds]),
                  num_inference_steps=settings["steps"], guidance_scale=settings["guidance"],
                  width=settings["width"], height=settings["height"], output_type="latent",
                  generator=[torch.Generator().manual_seed(x) for s in samples for x in s.candidate_seeds(3)],
                  callback_on_step_end=record)
        sched = tiny_pipe.scheduler
        a = sched.alphas_cumprod
        t1, t2 = int(sched.timesteps[1]), int(sched.timesteps[2])  # step 1 goes from x_t1 to x_t2
        x1, x2 = seen[0].float(), seen[1].float()
        # solve x1 = sqrt(a1) x0 + sqrt(1-a1) e, x2 = sqrt(a2) x0 + sqrt(1-a2) e for x0
        s1, n1, s2, n2 = a[t1].sqrt(), (1 - a[t1]).sqrt(), a[t2].sqrt(), (1 - a[t2]).sqrt()
        x0 = (x1 * n2 - x2 * n1) / (s1 * n2 - s2 * n1)
        factor = preview_factor(x0.shape[-2:], tiny_pipe.vae_scale_factor, tiny_scorer.size)
        assert factor == 2  # 64 px images, a 32 px CLIP: the preview is decoded at 32 px
        emb = tiny_scorer.image_embeddings(reference.decode(torch.nn.functional.avg_pool2d(x0, factor)))
        texts = tiny_scorer.text_embeddings([reference.rerank_text(s) for s in samples]).repeat_interleave(3, 0)
        scores = tiny_scorer.similarity(emb, texts).view(4, 3).cpu().numpy()
    assert [p.indices for p in pruned] == [[int(np.argmax(row))] for row in scores]


def test_cfg_until_drops_the_unconditional_half_and_stays_deterministic(tiny_pipe, tiny_scorer, emotions):
    samples = Plan(emotions, 2).samples
    exact = make_engine(tiny_pipe, tiny_scorer, emotions).candidates(samples, 0)
    runs = []
    for _ in range(2):
        engine = make_engine(tiny_pipe, tiny_scorer, emotions)
        engine.options.overrides["cfg_until"] = 0.5
        runs.append(engine.candidates(samples, 0))
    steps = engine.settings_for(samples[0])["steps"]
    assert engine.unet_images == 6 * 2 * 2 + 6 * (steps - 2)  # guided for 2 steps, then half the batch
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(*runs))
    assert not all(np.array_equal(a.pixels, b.pixels) for a, b in zip(exact, runs[0]))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_the_clean_prediction_of_vp_schedulers_matches_ddims_own(kind, tiny_pipe):
    """PNDM, DPM-Solver and UniPC do not return x0: the formula used for them agrees with DDIM's x0."""
    config = {**tiny_pipe.scheduler.config, "prediction_type": kind}
    ddim = make_scheduler("ddim", config)
    ddim.set_timesteps(4)
    torch.manual_seed(0)
    sample, output = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = ddim.timesteps[1]
    prev, x0 = ddim.step(output, t, sample, return_dict=False)
    assert torch.allclose(clean_prediction(ddim, output, t, sample, (prev,)), x0, atol=1e-5)
    assert clean_prediction(ddim, output, t, sample, (prev, x0)) is x0


def test_previews_are_decoded_no_smaller_than_clip_sees_them():
    assert preview_factor((64, 64), 8, 224) == 2  # SD 1.5 at 512 px: 256 px previews
    assert preview_factor((128, 128), 8, 224) == 4  # SDXL at 1024 px
    assert preview_factor((64, 48), 8, 224) == 1  # 512x384: half would be below 224
    assert preview_factor((33, 33), 8, 224) == 1  # odd latents are not pooled


def test_switch_steps_round_to_whole_steps():
    assert [switch_step(f, 4) for f in (0.1, 0.25, 0.5, 0.74, 0.9)] == [1, 1, 2, 3, None]
    assert switch_step(None, 25) is None and switch_step(0.3, 25) == 8


@pytest.mark.slow
def test_a_pruned_dataset_records_its_settings_and_reproduces_exactly(tmp_path, capsys):
    out = tmp_path / "fast"
    args = ["generate", "emotions", "--model", "tiny", "-n", "8", "--out", str(out), "--quiet"]
    assert _invoke(args + ["--prune-at", "0.5", "--keep", "1", "--cfg-until", "0.75"]) == 0
    table = pq.read_table(sorted(out.rglob("*.parquet"))[0]).to_pylist()
    for row in table:
        assert (row["prune_at"], row["keep"], row["cfg_until"]) == (0.5, 1, 0.75)
        scores = row["candidate_scores"]
        assert len(scores) == 3 and sum(s is not None for s in scores) == 1
        assert scores[row["candidate_index"]] is not None
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: manifest["generation"]["overrides"][k] for k in ("prune_at", "keep", "cfg_until")} == \
        {"prune_at": 0.5, "keep": 1, "cfg_until": 0.75}
    card = (out / "README.md").read_text()
    assert "| candidate pruning | after 2 of 4 steps" in card and "the best 1 of 3" in card
    assert "| guidance truncation | classifier-free guidance for the first 3 of 4 steps" in card
    ds = datasets.load_dataset(str(out), split="train")
    assert ds.features["prune_at"].dtype == "float32" and set(ds["keep"]) == {1}
    capsys.readouterr()
    assert _invoke(["validate", str(out), "--reproduce", "8"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: valid (8 rows in") and "8 rows regenerated" in printed
    # validate holds every row to the run's settings: a row claiming another keep, or a pruned winner
    import pyarrow as pa

    from facesynth.validate import validate

    first, second = sorted(out.rglob("*.parquet"))[:2]

    def tamper(shard, change):
        table = pq.read_table(shard)
        rows = table.to_pylist()
        change(rows[0])
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
        return shard.relative_to(out).as_posix(), rows[0]

    one, row_one = tamper(first, lambda row: row.update(keep=2))
    two, row_two = tamper(second, lambda row: row.update(
        candidate_index=next(i for i, s in enumerate(row["candidate_scores"]) if s is None)))
    problems = [str(p) for p in validate(out, images=False).problems]
    assert f"{one}: {row_one['sample_id']}: keep is 2, the run used 1" in problems
    assert (f"{two}: {row_two['sample_id']}: candidate_index {row_two['candidate_index']} is not a candidate "
            "that finished") in problems
    # another setting is another dataset: the same folder refuses it without --overwrite
    assert _invoke(args + ["--prune-at", "0.25", "--keep", "1", "--cfg-until", "0.75"]) == 2
    assert "holds a dataset made with different overrides" in capsys.readouterr().err
    assert _invoke(args) == 2  # and so does exact best-of-N


def _unet_shapes(pipe):
    shapes = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    return shapes, handle


@pytest.mark.slow
def test_compile_padding_gives_the_unet_one_batch_shape(tiny_pipe, tiny_scorer, emotions):
    """With --compile every call is padded to the full batch, so the compiled UNet compiles once."""
    samples = Plan(emotions, 6).samples
    plain = make_engine(tiny_pipe, tiny_scorer, emotions, batch_size=12)
    padded = make_engine(tiny_pipe, tiny_scorer, emotions, batch_size=12)
    padded.pad_to = 12
    shapes, handle = _unet_shapes(tiny_pipe)
    try:
        expected = list(plain.run(samples))  # calls of 4 samples, then 2
        plain_shapes = set(shapes)
        shapes.clear()
        got = list(padded.run(samples))
        # a retry round of one sample is padded to the same shape
        retry = padded.candidates(samples[:1], attempt=1)
    finally:
        handle.remove()
    assert len(plain_shapes) == 2 and set(shapes) == {(24, 4, 32, 32)}  # 12 images, guided
    assert [w.sample.sample_id for w in got] == [s.sample_id for s in samples] and len(retry) == 1
    assert got[-1].unet_calls == [12] and expected[-1].unet_calls == [6]
    for a, b in zip(expected, got):
        assert a.seed == b.seed and np.abs(a.pixels.astype(int) - b.pixels.astype(int)).max() <= 2
    # a padded row reproduces exactly: its recorded call size pads the same way
    again = padded.candidates([w.sample for w in got[4:]], 0, calls=got[-1].unet_calls)
    assert all(np.array_equal(s.pixels[s.indices.index(w.candidate_index)], w.pixels)
               for s, w in zip(again, got[4:]))


def test_padding_and_pruning_together(tiny_pipe, tiny_scorer, emotions):
    samples = Plan(emotions, 3).samples
    engine = make_engine(tiny_pipe, tiny_scorer, emotions, batch_size=12)
    engine.options.overrides.update(prune_at=0.5, keep=1)
    engine.pad_to = 12
    unpadded = make_engine(tiny_pipe, tiny_scorer, emotions, batch_size=12)
    unpadded.options.overrides.update(prune_at=0.5, keep=1)
    a, b = engine.candidates(samples, 0), unpadded.candidates(samples, 0)
    assert [s.indices for s in a] == [s.indices for s in b] and all(len(s.indices) == 1 for s in a)
    assert a[0].used == [12] and b[0].used == [9]
    assert all(np.abs(x.pixels.astype(int) - y.pixels.astype(int)).max() <= 2 for x, y in zip(a, b))


@pytest.mark.slow
def test_a_compiled_run_compiles_each_shape_once(tmp_path):
    """A real torch.compile run of 5 samples in calls of 4: the padded last call reuses the first graph."""
    import subprocess
    import sys

    code = ("import torch._dynamo.utils as u, sys\n"
            "from facesynth.generation import GenerateConfig, generate\n"
            f"generate(GenerateConfig(recipe='emotions', out=r'{tmp_path / 'c'}', num_samples=5, model='tiny',"
            " batch_size=12, compile=True, quiet=True, write_card=False))\n"
            "print(u.counters['stats']['unique_graphs'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    graphs = int(proc.stdout.strip().splitlines()[-1])
    assert graphs == 1, proc.stdout


@pytest.mark.slow
def test_the_benchmark_command_reports_what_both_runs_did(tiny_pipe, tiny_scorer, emotions, capsys):
    """`facesynth benchmark`: UNet evaluations per kept image, and the same-winner share measured here too."""
    assert _invoke(["benchmark", "emotions", "--model", "tiny", "-n", "8", "--prune-at", "0.25", "--keep", "1",
                    "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line[:32].strip(): line[32:].split() for line in lines[1:-1]}
    assert table["UNet evaluations per kept image"] == ["24.0", "12.0"]  # 3 x 4 steps x 2; then 3 x 2 + 3 x 2
    assert table["settings"] == ["every", "candidate", "to", "the", "end", "prune_at", "0.25,", "keep", "1"]
    samples = Plan(emotions, 8).samples
    engine = make_engine(tiny_pipe, tiny_scorer, emotions)
    exact = [w for i in (0, 4) for w in engine.generate(samples[i:i + 4], 0)]  # as the tool batches: 12 images
    engine.options.overrides.update(prune_at=0.25, keep=1)
    pruned = [w for i in (0, 4) for w in engine.generate(samples[i:i + 4], 0)]
    same = sum(a.candidate_index == b.candidate_index for a, b in zip(exact, pruned))
    assert lines[-1].startswith(f"same winner as exact best-of-3: {same / 8:.0%} of 8 samples; speed-up ")
    mean = sum(w.clip_score for w in exact) / 8
    assert table["mean clip_score"][0] == f"{mean:.3f}"
    assert _invoke(["benchmark", "emotions", "--model", "tiny", "-n", "4"]) == 2
    assert capsys.readouterr().err == ("Error: give --prune-at with --keep, or --cfg-until, or both: the settings "
                                       "to compare with exact best-of-N\n")


@pytest.mark.slow
def test_pruning_with_the_dedupe_gate_keeps_quotas_resumes_and_reproduces(tmp_path):
    """Pruned runs go through the same gates and refills; a crash and resume gives the same bytes."""
    from collections import Counter

    from conftest import PAIR, TINY_THRESHOLD, crash_at_shard
    from conftest import rows as _rows
    from conftest import shard_bytes as _shard_bytes

    from facesynth.generation import GenerateConfig, generate
    from facesynth.reproduce import Reproducer
    from facesynth.validate import validate

    recipe = tmp_path / "pair.yaml"
    recipe.write_text(PAIR)

    def config(out):
        return GenerateConfig(recipe=str(recipe), out=out, num_samples=16, model="tiny", quiet=True,
                              rows_per_shard=4, dedupe_threshold=TINY_THRESHOLD, max_refills=60, prune_at=0.5, keep=2)

    generate(config(tmp_path / "a"))
    rows = _rows(tmp_path / "a", ["sample_id", "emotion", "attempt", "keep", "candidate_scores"])
    assert Counter(r["emotion"] for r in rows) == {0: 8, 1: 8} and any(r["attempt"] > 0 for r in rows)
    assert all(r["keep"] == 2 and sum(s is not None for s in r["candidate_scores"]) == 2 for r in rows)
    assert validate(tmp_path / "a").problems == []

    with crash_at_shard(3):
        generate(config(tmp_path / "b"))
    assert generate(config(tmp_path / "b")).shards_skipped == 2
    assert _shard_bytes(tmp_path / "b") == _shard_bytes(tmp_path / "a")

    refilled = next(r for r in rows if r["attempt"] > 0)
    reproducer = Reproducer(tmp_path / "a", device="cpu")
    assert reproducer.reproduce(reproducer.rows([refilled["sample_id"]])[refilled["sample_id"]]).identical


def _tiny_sdxl():
    """A random-weight SDXL pipeline: two text encoders, pooled embeddings and time ids (as diffusers' tests)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from facesynth.tiny import build_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8)
    tokenizer = build_tokenizer()
    config = CLIPTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=32, intermediate_size=37,
                            layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
                            vocab_size=len(tokenizer), projection_dim=32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae.eval(), text_encoder=CLIPTextModel(config).eval(),
                                     text_encoder_2=CLIPTextModelWithProjection(config).eval(), tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pruning_and_truncation_on_sdxl_cut_pooled_embeddings_and_time_ids(tiny_scorer, emotions):
    check_pruning_and_truncation(_tiny_sdxl(), tiny_scorer, emotions, Plan(emotions, 2).samples,
                                 {"width": 32, "height": 32, "steps": 4})


def test_a_recipe_keep_not_below_candidates_is_one_line(tmp_path, capsys):
    from conftest import PAIR

    recipe = tmp_path / "fast.yaml"
    recipe.write_text(PAIR + "generation: {prune_at: 0.5, keep: 2}\n")
    out = tmp_path / "out"
    assert _invoke(["generate", str(recipe), "--model", "tiny", "-n", "4", "--candidates", "2", "-o", str(out)]) == 2
    assert capsys.readouterr().err == ("Error: keep: the recipe keeps 2 candidates past prune_at, which must be "
                                       "below --candidates (2)\n")
    assert not out.exists()


def test_a_prune_step_that_rounds_to_the_end_is_refused_not_recorded(tmp_path, capsys):
    """--prune-at 0.9 of 4 steps rounds to the last step, where pruning would cut nothing: refused in one line
    rather than recorded as pruning that never ran."""
    out = tmp_path / "late"
    capsys.readouterr()
    assert _invoke(["generate", "emotions", "--model", "tiny", "-n", "4", "--out", str(out), "--quiet",
                    "--prune-at", "0.9", "--keep", "1"]) == 2
    assert capsys.readouterr().err.startswith("Error: --prune-at: pruning at 0.9 of 4 step(s) would never run")
    assert not out.exists()


def test_each_pipeline_runs_through_its_family_and_another_kind_is_one_line(tiny_pipe):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from facesynth.errors import ModelError
    from facesynth.generation.families import family_of

    sd, xl = family_of(tiny_pipe), family_of(_tiny_sdxl())
    assert (sd.name, xl.name) == ("sd", "sdxl")
    sd_cond = sd.encoder(tiny_pipe).encode("a smiling face", "blurry")
    xl_pipe = _tiny_sdxl()
    xl_cond = xl.encoder(xl_pipe).encode("a smiling face", "blurry")
    assert set(sd.call_inputs([sd_cond, sd_cond])) == {"prompt_embeds", "negative_prompt_embeds"}
    inputs = xl.call_inputs([xl_cond, xl_cond])
    assert set(inputs) == {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                           "negative_pooled_prompt_embeds"}
    assert inputs["pooled_prompt_embeds"].shape[0] == 2 and xl_cond.pooled is not None
    torch.manual_seed(0)
    other = DDPMPipeline(unet=UNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4,
                                          down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2),
                         scheduler=DDPMScheduler())
    with pytest.raises(ModelError, match=r"^--model: a DDPMPipeline is not a pipeline facesynth runs "
                                         r"\(StableDiffusionPipeline, StableDiffusionXLPipeline, "
                                         r"StableDiffusion3Pipeline, FluxPipeline\)$"):
        family_of(other)
