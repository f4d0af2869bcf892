"""Write a diffusers Stable Diffusion 1.x pipeline as one original-layout (LDM) ``.safetensors`` checkpoint.

diffusers only converts the other way (``from_single_file``), so the tests that load a single-file
checkpoint make one from a random-weight pipeline with this mapping of the LDM names.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_key(key: str, per_block: int) -> str:
    """The LDM name of one diffusers UNet parameter."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for new, old in fixed.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        layer = f"input_blocks.{i * (per_block + 1) + j + 1}"
        return f"{layer}.0.{_rename(rest, RESNET)}" if kind == "resnets" else f"{layer}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (per_block + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{_rename(m[3], RESNET)}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        layer = f"output_blocks.{i * (per_block + 1) + j}"
        return f"{layer}.0.{_rename(rest, RESNET)}" if kind == "resnets" else f"{layer}.1.{rest}"
    raise KeyError(key)


def unet_state(unet) -> dict[str, torch.Tensor]:
    config = unet.config
    per_block = config.layers_per_block
    state = unet.state_dict()
    out = {}
    for key, value in state.items():
        if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            i = int(m[1])
            has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
            name = f"output_blocks.{i * (per_block + 1) + per_block}.{2 if has_attention else 1}.conv.{m[2]}"
        else:
            name = unet_key(key, per_block)
        out["model.diffusion_model." + name] = value
    return out


def vae_key(key: str, blocks: int) -> str:
    """The LDM name of one diffusers VAE parameter (attention weights are reshaped by the caller)."""
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename(m[3], VAE_RESNET)}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        return f"{m[1]}.mid.attn_1.{_rename(m[2], VAE_ATTENTION)}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename(m[3], VAE_RESNET)}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{_rename(m[3], VAE_RESNET)}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
        return f"decoder.up.{blocks - 1 - int(m[1])}.upsample.{m[2]}"
    return key.replace("conv_norm_out", "norm_out")


def vae_state(vae) -> dict[str, torch.Tensor]:
    blocks = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        name = vae_key(key, blocks)
        if ".attn_1." in name and value.ndim == 2:  # LDM keeps these projections as 1x1 convolutions
            value = value[:, :, None, None]
        out["first_stage_model." + name] = value
    return out


def text_state(text_encoder) -> dict[str, torch.Tensor]:
    prefix = "cond_stage_model.transformer."
    out = {}
    for key, value in text_encoder.state_dict().items():
        name = key if key.startswith("text_model.") else "text_model." + key
        out[prefix + name] = value
    return out


def save_ldm_checkpoint(pipe, path: Path) -> Path:
    """Save ``pipe``'s UNet, VAE and text encoder as one LDM-layout safetensors file."""
    from safetensors.torch import save_file

    state = {**unet_state(pipe.unet), **vae_state(pipe.vae), **text_state(pipe.text_encoder)}
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    return path
