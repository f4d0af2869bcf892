"""Write a diffusers SD 3 or FLUX transformer as an original-layout (single-file) ``.safetensors`` checkpoint.

diffusers converts only the other way (``from_single_file``), so this is the inverse of its
``convert_sd3_transformer_checkpoint_to_diffusers`` and ``convert_flux_transformer_checkpoint_to_diffusers``,
and :func:`original_state` checks itself by running diffusers' converter on the result.
"""
from __future__ import annotations

from pathlib import Path

import torch

PREFIX = "model.diffusion_model."


def _swap(weight: torch.Tensor) -> torch.Tensor:
    """Original AdaLN modulations hold (shift, scale); diffusers' hold (scale, shift). Its own inverse."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _cat(state: dict, block: str, names: tuple[str, ...], kind: str) -> torch.Tensor:
    return torch.cat([state.pop(f"{block}{n}.{kind}") for n in names], dim=0)


SD3_FIXED = {"pos_embed.pos_embed": "pos_embed", "pos_embed.proj": "x_embedder.proj",
             "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
             "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
             "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
             "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
             "context_embedder": "context_embedder", "proj_out": "final_layer.linear"}
SD3_BLOCK = {"attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
             "attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
             "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
             "attn2.to_out.0": "x_block.attn2.proj", "attn2.norm_q": "x_block.attn2.ln_q",
             "attn2.norm_k": "x_block.attn2.ln_k", "norm1.linear": "x_block.adaLN_modulation.1",
             "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
             "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2"}
FLUX_FIXED = {"time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
              "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
              "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
              "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
              "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
              "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
              "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear"}
FLUX_DOUBLE = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
               "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
               "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
               "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0",
               "ff_context.net.2": "txt_mlp.2", "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj"}
FLUX_SINGLE = {"norm.linear": "modulation.lin", "attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm",
               "proj_out": "linear2"}


def _rename(state: dict, out: dict, table: dict[str, str], source: str = "", target: str = "") -> None:
    for key in [k for k in state if k.startswith(source)]:
        rest = key[len(source):]
        for new, old in table.items():
            if rest.startswith(new + ".") or rest == new:
                name = target + old + rest[len(new):]
                if name.endswith("_norm.weight"):  # FLUX's RMSNorm weights are called "scale" there
                    name = name[: -len("weight")] + "scale"
                out[name] = state.pop(key)
                break


def sd3_state(transformer) -> dict[str, torch.Tensor]:
    state = dict(transformer.state_dict())
    out: dict[str, torch.Tensor] = {}
    layers = transformer.config.num_layers
    for kind in ("weight", "bias"):
        key = f"norm_out.linear.{kind}"
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap(state.pop(key))
    for i in range(layers):
        block, target = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{target}x_block.attn.qkv.{kind}"] = _cat(state, block, ("attn.to_q", "attn.to_k", "attn.to_v"), kind)
            out[f"{target}context_block.attn.qkv.{kind}"] = _cat(
                state, block, ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), kind)
            if f"{block}attn2.to_q.{kind}" in state:
                out[f"{target}x_block.attn2.qkv.{kind}"] = _cat(
                    state, block, ("attn2.to_q", "attn2.to_k", "attn2.to_v"), kind)
            context = state.pop(f"{block}norm1_context.linear.{kind}")  # the last block's has no gate: swapped
            out[f"{target}context_block.adaLN_modulation.1.{kind}"] = _swap(context) if i == layers - 1 else context
        _rename(state, out, SD3_BLOCK, block, target)
    _rename(state, out, SD3_FIXED)
    assert not state, f"unmapped: {sorted(state)}"
    return out


def flux_state(transformer) -> dict[str, torch.Tensor]:
    state = dict(transformer.state_dict())
    out: dict[str, torch.Tensor] = {}
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap(state.pop(f"norm_out.linear.{kind}"))
    for i in range(transformer.config.num_layers):
        block, target = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{target}img_attn.qkv.{kind}"] = _cat(state, block, ("attn.to_q", "attn.to_k", "attn.to_v"), kind)
            out[f"{target}txt_attn.qkv.{kind}"] = _cat(
                state, block, ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), kind)
        _rename(state, out, FLUX_DOUBLE, block, target)
    for i in range(transformer.config.num_single_layers):
        block, target = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{target}linear1.{kind}"] = _cat(
                state, block, ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), kind)
        _rename(state, out, FLUX_SINGLE, block, target)
    _rename(state, out, FLUX_FIXED)
    assert not state, f"unmapped: {sorted(state)}"
    return out


def original_state(transformer, family: str) -> dict[str, torch.Tensor]:
    """The original-layout state dict of a diffusers SD 3 (``sd3``) or FLUX (``flux``) transformer, checked by
    converting it back with diffusers' own converter (every tensor equal, none left over)."""
    from diffusers.loaders import single_file_utils as sfu

    out = sd3_state(transformer) if family == "sd3" else flux_state(transformer)
    convert = (sfu.convert_sd3_transformer_checkpoint_to_diffusers if family == "sd3"
               else sfu.convert_flux_transformer_checkpoint_to_diffusers)
    back = convert({PREFIX + k: v for k, v in out.items()})
    expected = transformer.state_dict()
    assert back.keys() == expected.keys(), sorted(set(back) ^ set(expected))
    assert all(torch.equal(back[k], expected[k]) for k in expected)
    return out


def save_mmdit_checkpoint(pipe, family: str, path: Path, vae: bool = True) -> Path:
    """Save ``pipe``'s transformer (and, with ``vae``, its VAE under ``first_stage_model.``) as one original-layout
    safetensors file, as SD 3's single files are; FLUX.1's own files hold the transformer alone (``vae=False``)."""
    from ldm_checkpoint import vae_state
    from safetensors.torch import save_file

    state = {PREFIX + k: v for k, v in original_state(pipe.transformer, family).items()}
    if vae:
        state.update(vae_state(pipe.vae))
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    return path



def check_single_file(pipe, family: str, tmp_path: Path, recipe: str, vae: bool, **settings) -> None:
    """``generate --model FILE --model-config DIR`` on an original-layout checkpoint of ``pipe`` (the config folder
    holds no transformer weights, and no VAE weights when the file has them) writes the same shards as
    ``--model FOLDER`` of the same pipeline, offline; the manifest names the family and the file's sha256."""
    import json
    import os
    import shutil

    import pyarrow.parquet as pq
    from conftest import invoke

    from facesynth.generation.loading import peek_architecture

    folder = tmp_path / "model"
    pipe.save_pretrained(folder, safe_serialization=True)
    ckpt = save_mmdit_checkpoint(pipe, family, tmp_path / f"{family}.safetensors", vae=vae)
    config = tmp_path / "config"
    shutil.copytree(folder, config)
    for part in ("transformer", "vae") if vae else ("transformer",):
        for weights in (config / part).glob("*.safetensors"):
            weights.unlink()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and peek_architecture(str(ckpt)) == family
    common = ["-n", "2", "--candidates", "2", "--clip-model", "tiny", "-q"]
    for name, value in settings.items():
        common += [f"--{name}", str(value)]
    runs = {"file": ["--model", str(ckpt), "--model-config", str(config)], "folder": ["--model", str(folder)]}
    for name, args in runs.items():
        assert invoke(["generate", recipe, *args, "--out", str(tmp_path / f"out-{name}"), *common]) == 0
    columns = ["sample_id", "image", "seed", "clip_score"]
    rows = {name: [pq.read_table(f, columns=columns).to_pylist() for f in sorted((tmp_path / f"out-{name}").rglob("*.parquet"))]
            for name in runs}
    assert rows["file"] == rows["folder"] and sum(map(len, rows["file"])) == 2  # the same model: the same pixels
    model = json.loads((tmp_path / "out-file" / "manifest.json").read_text())["model"]
    assert (model["kind"], model["architecture"]) == ("file", family) and len(model["sha256"]) == 64
