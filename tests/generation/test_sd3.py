"""The SD 3 family on the ``tiny-sd3`` preset: a random MMDiT transformer, two CLIP text encoders and T5, with
tokenizers built locally (T5's with the ``tokenizers`` library), flow matching, offline, on CPU."""

import json

import numpy as np
import pytest
import torch

from conftest import PAIR, check_pruning_and_truncation, crash_at_shard, invoke, shard_bytes
from facesynth.plan import Plan
from facesynth.recipe import parse_recipe


@pytest.fixture(scope="module")
def sd3_pipe():
    from facesynth.generation.loading import load_pipeline

    pipe, info = load_pipeline("tiny-sd3")
    assert info.architecture == "sd3"
    return pipe


@pytest.fixture
def pair_file(tmp_path):
    path = tmp_path / "pair.yaml"
    path.write_text(PAIR)
    return str(path)


def _config(recipe, out, **extra):
    from facesynth.generation import GenerateConfig

    return GenerateConfig(recipe=recipe, out=out, num_samples=6, model="tiny-sd3", quiet=True, rows_per_shard=2,
                          **extra)


@pytest.mark.slow
def test_sd3_rows_are_the_same_on_a_rerun_and_after_a_crash_and_reproduce(pair_file, tmp_path):
    from facesynth.generation import generate
    from facesynth.reproduce import Reproducer

    first = generate(_config(pair_file, tmp_path / "a"))
    assert first.timings["unet_images"] == 6 * 3 * 4 * 2  # samples x candidates x steps x (cond + uncond)
    generate(_config(pair_file, tmp_path / "b"))
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    with crash_at_shard(2):
        generate(_config(pair_file, tmp_path / "c"))
    generate(_config(pair_file, tmp_path / "c"))
    assert shard_bytes(tmp_path / "c") == shard_bytes(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["model"]["architecture"] == "sd3" and manifest["model"]["name"] == "tiny-sd3"
    assert "architecture <code>sd3</code>" in (tmp_path / "a" / "README.md").read_text()
    reproducer = Reproducer(tmp_path / "a", device="cpu")
    rows = reproducer.rows(["pair-0000000", "pair-0000005"])
    assert all(reproducer.reproduce(row).identical for row in rows.values())


def test_pruning_on_sd3_takes_x0_from_the_velocity_and_survivors_keep_their_trajectories(sd3_pipe, tiny_scorer):
    recipe = parse_recipe(PAIR)  # the pooled embeddings are cut with the rest
    check_pruning_and_truncation(sd3_pipe, tiny_scorer, recipe, Plan(recipe, 2).samples,
                                 {"width": 64, "height": 64, "steps": 4})


def test_the_flow_matching_x0_is_the_clean_latent(sd3_pipe):
    """x_t = (1 - sigma) x0 + sigma noise; a model that predicts v = noise - x0 exactly gives back x0."""
    from facesynth.generation.steps import clean_prediction

    scheduler = sd3_pipe.scheduler
    scheduler.set_timesteps(4)
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    sample = x0
    for t in scheduler.timesteps[:2]:
        sigma = scheduler.sigmas[scheduler.step_index or 0]
        sample = (1 - sigma) * x0 + sigma * noise
        v = noise - x0
        result = scheduler.step(v, t, sample, return_dict=False)
        assert torch.allclose(clean_prediction(scheduler, v, t, sample, result), x0, atol=1e-5)


def test_t5_reads_past_clips_77_tokens(sd3_pipe):
    from facesynth.generation.families import family_of

    encoder = family_of(sd3_pipe).encoder(sd3_pipe)
    start = "portrait photo of a person, " * 4  # 112 characters: past CLIP's 77 (character-level) tokens
    a, b = encoder.encode(start + "smiling", ""), encoder.encode(start + "frowning", "")
    assert a.length == b.length == 77 + 256  # CLIP's tokens, then T5's
    assert torch.equal(a.embeds[:, :77], b.embeds[:, :77])  # CLIP stopped before the words that differ
    assert not torch.allclose(a.embeds[:, 77:], b.embeds[:, 77:])  # T5 read them


def test_what_sd3_cannot_do_is_one_line_and_writes_nothing(pair_file, tmp_path, capsys):
    cases = [
        (["emotions"], "Error: emotions-0000000: its negative prompt has weights ('(3d, cartoon, anime, sketch:1.2), "
                       "(worst quality, low qualit'), which an SD 3.x model cannot apply (its pipeline encodes plain "
                       "text, T5 has no weights); write the recipe's prompts without them"),
        ([pair_file, "--scheduler", "ddim"], "Error: scheduler: 'ddim' is a diffusion scheduler; an SD 3.x model "
                                             "runs with its own flow-matching scheduler (--scheduler default)"),
        ([pair_file, "--preset", "lcm"], "Error: scheduler: 'lcm' is a diffusion scheduler; an SD 3.x model runs "
                                         "with its own flow-matching scheduler (--scheduler default)"),
        ([pair_file, "--height", "256"], "Error: height: 256 is more than the 192 px an SD 3.x model takes (its "
                                         "positional embeddings cover 96 patches a side: 96 x VAE 2 x patch 1); set "
                                         "--height or the recipe's height"),  # diffusers would raise mid-run
    ]
    for args, line in cases:
        out = tmp_path / "out"
        capsys.readouterr()
        assert invoke(["generate", *args, "--model", "tiny-sd3", "-n", "4", "--out", str(out), "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == line, err
        assert not out.exists()


@pytest.mark.slow
def test_an_sd3_folder_loads_through_diffusers_and_is_known_before_loading(sd3_pipe, tmp_path):
    from facesynth.generation.loading import load_pipeline, peek_architecture

    folder = tmp_path / "my-sd3"
    sd3_pipe.save_pretrained(folder, safe_serialization=True)
    assert peek_architecture(str(folder)) == "sd3"
    pipe, info = load_pipeline(str(folder))
    assert (type(pipe).__name__, info.architecture, info.kind) == ("StableDiffusion3Pipeline", "sd3", "folder")
    g = torch.Generator().manual_seed(0)
    kwargs = {"prompt": "a smiling face", "num_inference_steps": 2, "height": 64, "width": 64, "output_type": "np"}
    ours = pipe(**kwargs, generator=g).images
    theirs = sd3_pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(ours, theirs)


def test_a_lora_for_the_sd3_transformer_fuses_and_changes_the_image(tmp_path):
    from conftest import check_fused_lora, transformer_lora
    from facesynth import tiny
    from facesynth.generation.adapters import Adapter, apply

    path = transformer_lora(tiny.build_sd3_pipeline, tmp_path)
    check_fused_lora(tiny.build_sd3_pipeline, path, "tiny-sd3")
    with pytest.raises(Exception, match="does not fit the model 'tiny'"):  # an SD 3 adapter on an SD UNet
        apply(tiny.build_pipeline(), [Adapter(path.name, "file", 1.0, "--lora", path=str(path))], "tiny")


@pytest.mark.parametrize("vae", [True, False], ids=["with-its-vae", "transformer-only"])
def test_an_sd3_single_file_checkpoint_loads_offline_with_a_config_folder(sd3_pipe, pair_file, tmp_path, vae):
    """An original-layout SD 3 file (``model.diffusion_model.joint_blocks...``), with or without its VAE; the text
    encoders, tokenizers and scheduler come from ``--model-config``."""
    from mmdit_checkpoint import check_single_file

    check_single_file(sd3_pipe, "sd3", tmp_path, pair_file, vae=vae, width=64, height=64, steps=2)


def test_a_single_file_missing_a_part_its_config_folder_lacks_too_is_one_line(sd3_pipe, pair_file, tmp_path, capsys):
    import shutil

    from mmdit_checkpoint import save_mmdit_checkpoint

    ckpt = save_mmdit_checkpoint(sd3_pipe, "sd3", tmp_path / "sd3.safetensors")
    config = tmp_path / "config"
    sd3_pipe.save_pretrained(config, safe_serialization=True)
    shutil.rmtree(config / "transformer")
    (config / "text_encoder_2" / "model.safetensors").unlink()
    out = tmp_path / "out"
    args = ["generate", pair_file, "--model", str(ckpt), "--model-config", str(config), "-n", "2", "--out", str(out),
            "--width", "64", "--height", "64", "-q"]
    capsys.readouterr()  # what saving the folder printed
    assert invoke(args) == 2
    assert capsys.readouterr().err.strip() == (f"Error: --model: '{ckpt}' holds no CLIPTextModelWithProjection "
                                               f"weights; --model-config '{config}' has none either")
    assert not out.exists()
