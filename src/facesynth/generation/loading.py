"""Load a text-to-image pipeline: the tiny preset, a Hub repo, a local folder or one file.

Safetensors only: ``use_safetensors=True`` everywhere, and single files must end in
``.safetensors``. Remote code is never trusted.
"""

from __future__ import annotations

import logging
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError, first_line
from ..recipe import SCHEDULER_NAMES
from .quiet import no_bars

logger = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# name -> (diffusers scheduler class name, extra config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpm++_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    # few-step models (see PRESETS): latent-consistency, trajectory-consistency, and trailing timestep spacing
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
    "euler_trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "ddim_trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
}


@dataclass
class ModelInfo:
    """What the manifest records about the diffusion model."""

    name: str  # a Hub id, or a local folder's or file's name (never its absolute path, which the card shows)
    kind: str  # tiny | hub | folder | file
    revision: str | None = None
    commit: str | None = None
    architecture: str = "sd"  # sd | sdxl
    path: str | None = None  # a local model's path, kept for `reproduce` and left out of what is published
    config: str | None = None  # the local config folder of a single-file checkpoint (--model-config), likewise
    sha256: str | None = None  # a single-file checkpoint's
    license: str | None = None  # as the model's Hub card says, when it says
    preset_settings: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"--device: '{device}' is not a device (use auto, cpu, cuda, cuda:N or mps)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device: CUDA was asked for, but no CUDA GPU is available")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """fp16 on CUDA and fp32 elsewhere unless asked otherwise."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"--dtype: '{dtype}' is not one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def make_scheduler(name: str, base_config: dict):
    """A scheduler instance by facesynth name, configured from the model's own config."""
    import diffusers

    if name not in SCHEDULERS:
        raise ModelError(f"--scheduler: '{name}' is not one of {', '.join(SCHEDULER_NAMES)}")
    cls_name, extra = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(base_config, **extra)

def load_pipeline(model: str, *, revision: str | None = None, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu", config: str | None = None, progress: bool = True):
    """Return ``(pipeline, ModelInfo)`` for ``tiny``, a Hub id, a local folder or a .safetensors file.

    ``config`` is a local diffusers folder of configs (and tokenizers) for a single-file checkpoint,
    so that it loads without the network. ``progress=False`` hides diffusers' and transformers' loading bars.
    """
    from .. import tiny

    if tiny.is_tiny(model):
        pipe = tiny.TINY_MODELS[model]()
        info = ModelInfo(model, "tiny", preset_settings=dict(tiny.TINY_SETTINGS))
    else:
        with nullcontext() if progress else no_bars():
            pipe, info = _load_real(model, revision, dtype, config)
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    from .families import family_of

    info.architecture = family_of(pipe).name
    return pipe, info


def _checkpoint_keys(path: Path) -> list[str]:
    """The tensor names in a .safetensors file, from its header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def peek_architecture(model: str, revision: str | None = None) -> str | None:
    """The model's family name (``sd``, ``sdxl``, ``sd3``, ``flux``) without loading any weights: from a file's
    header, or a folder's or Hub repo's ``model_index.json``; None when that cannot be told (the load itself
    then reports what is wrong)."""
    import json

    from ..tiny import TINY_ARCHITECTURES

    if model in TINY_ARCHITECTURES:
        return TINY_ARCHITECTURES[model]
    path = Path(model)
    try:
        if path.is_file():
            keys = _checkpoint_keys(path)
            if any(".joint_blocks." in k for k in keys):  # SD 3's MMDiT
                return "sd3"
            if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
                return "flux"
            return "sdxl" if any(k.startswith("conditioner.embedders.1") for k in keys) else "sd"
        if path.is_dir():
            index = path / "model_index.json"
        else:
            from huggingface_hub import constants, hf_hub_download

            index = Path(hf_hub_download(model, "model_index.json", revision=revision,
                                         local_files_only=constants.HF_HUB_OFFLINE))
        name = json.loads(index.read_text()).get("_class_name", "")
    except Exception as exc:  # noqa: BLE001 - unknown here; loading the model says why
        logger.info("cannot tell the architecture of %s before loading it: %s", model, exc)
        return None
    from .families import family_for_class

    family = family_for_class(name)
    return family.name if family is not None else None


# Components a text-to-image run never uses: not downloaded, not loaded (facesynth's gates judge safety).
UNUSED = {"safety_checker": None, "feature_extractor": None, "image_encoder": None}


def _load_real(model: str, revision: str | None, dtype: torch.dtype, config: str | None = None):
    from diffusers import AutoPipelineForText2Image

    from ..folder.pins import looks_local

    path = Path(model).expanduser()
    if looks_local(model) and not path.exists():
        raise ModelError(f"--model: no such file or folder '{model}'")
    common = {"torch_dtype": dtype, "use_safetensors": True}
    if config is not None and not Path(config).is_dir():
        raise ModelError(f"--model-config: '{config}' is not a folder of diffusers configs")
    try:
        if path.is_file():
            pipe = _load_single_file(path, dtype, config)
            return pipe, ModelInfo(path.name, "file", path=str(path.resolve()), sha256=_sha256(path),
                                   config=str(Path(config).resolve()) if config else None)
        if path.is_dir():
            pipe = AutoPipelineForText2Image.from_pretrained(str(path), **common, **_unused(path))
            return pipe, ModelInfo(path.resolve().name, "folder", path=str(path.resolve()))
        if model.endswith((".ckpt", ".bin", ".pt", ".pth")):
            raise ModelError(f"--model: '{model}': only .safetensors checkpoints are loaded, never pickle files")
        folder, variant = _download(model, revision, dtype)
        pipe = AutoPipelineForText2Image.from_pretrained(folder, **common, variant=variant, **_unused(Path(folder)))
        return pipe, ModelInfo(model, "hub", revision=revision, commit=Path(folder).name,
                               license=_hub_license(model, Path(folder).name))
    except ModelError:
        raise
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelError(
            f"--model: cannot load '{model}' ({_why(exc)}); "
            "use --model tiny, a local diffusers folder or a .safetensors file"
        ) from exc


def _sha256(path: Path) -> str:
    from ..folder.writer import sha256_file

    return sha256_file(path)


def _hub_license(model: str, commit: str) -> str | None:
    """The licence the model's Hub card declares, or None (offline, or no card)."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        data = HfApi(library_name="facesynth").model_info(model, revision=commit).card_data
    except Exception as exc:  # noqa: BLE001 - a missing licence only changes what the card says
        logger.info("no licence from the Hub card of %s: %s", model, exc)
        return None
    return getattr(data, "license", None) if data is not None else None


def _why(exc: BaseException) -> str:
    """A short reason for a failed model load."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(exc, GatedRepoError):
        return "gated: accept its terms on its Hub page, then log in (`hf auth login`) or set HF_TOKEN"
    if isinstance(exc, RevisionNotFoundError):
        return "no such revision"
    if isinstance(exc, RepositoryNotFoundError):
        return "no such repo on the Hub, or a private one: log in"
    text = first_line(exc)
    if constants.HF_HUB_OFFLINE and (isinstance(exc, LocalEntryNotFoundError) or "cached" in text):
        return "not in the local cache, and HF_HUB_OFFLINE=1 forbids downloading it"
    return text.split(" Please check")[0]


def _download(model: str, revision: str | None, dtype: torch.dtype) -> tuple[str, str | None]:
    """Download only what runs: the fp16 weights when running in fp16 and the repo has them, no unused parts."""
    from diffusers import DiffusionPipeline

    if dtype == torch.float16:
        try:
            folder = DiffusionPipeline.download(model, revision=revision, use_safetensors=True, variant="fp16",
                                                **UNUSED)
        except (OSError, ValueError) as exc:
            if "variant" not in str(exc).lower() and "fp16" not in str(exc):
                raise
        else:  # diffusers falls back to the full-precision files where a repo has no fp16 ones
            return folder, "fp16" if any(Path(folder).rglob("*.fp16.safetensors")) else None
        logger.info("%s has no fp16 weights; downloading the full-precision ones", model)
    return DiffusionPipeline.download(model, revision=revision, use_safetensors=True, **UNUSED), None


def _unused(folder: Path) -> dict:
    """``component=None`` for the unused components the model lists, so they are not loaded."""
    import json

    try:
        listed = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    skip = {name: None for name in UNUSED if name in listed}
    if "safety_checker" in skip:
        skip["requires_safety_checker"] = False
    return skip


# Where an original-layout SD 3 or FLUX file keeps the parts besides its transformer, when it has them.
IN_FILE = {"sd3": {"vae": ("first_stage_model.",), "text_encoder": ("text_encoders.clip_l.",),
                   "text_encoder_2": ("text_encoders.clip_g.",), "text_encoder_3": ("text_encoders.t5xxl.",)},
           "flux": {"vae": ("vae.", "first_stage_model."), "text_encoder": ("text_encoders.clip_l.",),
                    "text_encoder_2": ("text_encoders.t5xxl.",)}}


def _from_config_folder(path: Path, family: str | None, config: str | None, dtype: torch.dtype) -> dict:
    """The parts an SD 3 or FLUX file lacks (FLUX.1's own files hold only the transformer), loaded from the
    ``--model-config`` folder where it has their weights (diffusers looks there only for its own file names)."""
    import importlib
    import json

    if family not in IN_FILE or config is None:
        return {}
    keys = _checkpoint_keys(path)
    index = Path(config) / "model_index.json"
    listed = json.loads(index.read_text()) if index.is_file() else {}
    parts = {}
    for name, prefixes in IN_FILE[family].items():
        if any(k.startswith(prefixes) for k in keys) or not list((Path(config) / name).glob("*.safetensors")):
            continue
        library, cls = listed.get(name, [None, None])
        if library not in ("diffusers", "transformers"):
            continue
        loader = getattr(importlib.import_module(library), cls)
        parts[name] = loader.from_pretrained(str(Path(config) / name), torch_dtype=dtype, use_safetensors=True,
                                             local_files_only=True)
    return parts


def _load_single_file(path: Path, dtype: torch.dtype, config: str | None = None):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    if path.suffix != ".safetensors":
        raise ModelError(f"--model: '{path}': only .safetensors checkpoints are loaded, never pickle files")
    family = peek_architecture(str(path))
    cls = {"sdxl": StableDiffusionXLPipeline, "sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}.get(
        family, StableDiffusionPipeline)
    kwargs = {"safety_checker": None, "requires_safety_checker": False} if cls is StableDiffusionPipeline else {}
    if config is not None:  # configs and tokenizers from a local folder: no download at all
        kwargs.update(config=str(config), local_files_only=True)
    kwargs.update(_from_config_folder(path, family, config, dtype))
    try:
        return cls.from_single_file(str(path), torch_dtype=dtype, **kwargs)
    except SingleFileComponentError as exc:
        part = re.search(r"Failed to load (\w+)", str(exc))
        where = ("give --model-config a diffusers folder that has them" if config is None
                 else f"--model-config '{config}' has none either")
        raise ModelError(f"--model: '{path}' holds no {part[1] if part else 'component'} weights; {where}") from exc


def optimize_pipeline(pipe, compile: bool = False, channels_last: bool = False) -> None:
    """Speed-ups that leave the results' meaning unchanged: channels_last memory and ``torch.compile``.

    Attention already runs through PyTorch's SDPA (diffusers' default processor).
    """
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        pipe.unet = torch.compile(pipe.unet)
        logger.info("compiled the UNet with torch.compile; the first batches are slow while it compiles")
