"""Shared fixtures. Every test runs offline: the Hub is unreachable and any socket to a
non-loopback address fails the test."""

from __future__ import annotations

import os
import shutil
import socket
import textwrap
from contextlib import contextmanager

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        return _real_connect(self, address)
    raise RuntimeError(f"test tried to reach the network: {address!r}")


socket.socket.connect = _guarded_connect


@pytest.fixture(autouse=True)
def _cli_logging_undone():
    """The CLI run in-process (``invoke``) sets the root logger's level and, with ``-q``, ignores warnings, as a
    real process may until it ends; here the next test starts as the first did."""
    import logging
    import warnings

    level, filters = logging.getLogger().level, warnings.filters[:]
    yield
    logging.getLogger().setLevel(level)
    warnings.filters[:] = filters


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each session gets its own datasets cache, so no test is served another's data."""
    cache = tmp_path_factory.getbasetemp() / "hf_datasets_cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)


@pytest.fixture(scope="session")
def tiny_pipe():
    from facesynth.generation import load_pipeline

    pipe, _ = load_pipeline("tiny")
    return pipe


@pytest.fixture(scope="session")
def tiny_scorer():
    from facesynth.checks.scoring import ClipScorer

    return ClipScorer.load("tiny")


@pytest.fixture(scope="session")
def emotions():
    from facesynth.recipe import load_recipe

    return load_recipe("emotions")


def check_pruning_and_truncation(pipe, scorer, recipe, samples, base):
    """Two samples of 3 candidates over 4 guided steps: pruned survivors are their unpruned
    candidates, the evaluation counts are what the settings promise, and guidance truncation followed by pruning
    (which then cuts unguided tensors) gives the same pixels twice."""
    import numpy as np

    from facesynth.generation import Engine, EngineOptions

    def run(**extra):
        engine = Engine(pipe, scorer, recipe, EngineOptions(overrides={**base, **extra}))
        return engine, engine.candidates(samples, 0)

    _, full = run()
    engine, pruned = run(prune_at=0.5, keep=1)
    assert engine.unet_images == 6 * 2 * 2 + 2 * 2 * 2
    for f, p in zip(full, pruned):  # the survivors run in a smaller batch: CPU kernels may round a level apart
        diff = np.abs(p.pixels[0].astype(int) - f.pixels[p.indices[0]].astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    engine, both = run(prune_at=0.5, keep=2, cfg_until=0.25)  # guidance stops after 1 step, pruning after 2
    assert engine.unet_images == 6 * 2 + 6 + 4 * 2
    _, again = run(prune_at=0.5, keep=2, cfg_until=0.25)
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(both, again))


def make_engine(pipe, scorer, recipe, quality=None, **options):
    """An engine on the tiny preset; ``quality`` takes ``QualityOptions`` (the gates)."""
    from facesynth.generation import Engine, EngineOptions
    from facesynth.tiny import TINY_SETTINGS

    opts = EngineOptions(overrides=dict(TINY_SETTINGS), **options)
    return Engine(pipe, scorer, recipe, opts, quality)


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """A real tiny dataset made once per session: 24 emotions samples, 3 candidates, several shards."""
    from facesynth.generation import GenerateConfig, generate

    out = tmp_path_factory.mktemp("demo") / "demo"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=24, model="tiny", quiet=True,
                            rows_per_shard=8, batch_size=12))
    return out


@pytest.fixture
def demo_copy(demo_dataset, tmp_path):
    """A copy of the demo dataset that a test may change."""
    out = tmp_path / "demo"
    shutil.copytree(demo_dataset, out)
    return out


# Two label cells, so several rows share a cell and deduplication has something to compare.
PAIR = textwrap.dedent("""\
    name: pair
    primary: emotion
    attributes:
      emotion:
        values:
          happy: [smiling]
          sad: [frowning]
    template: "portrait photo of a person, {emotion}"
    negative_prompt: "blurry"
    balance:
      cross: [emotion]
    splits: {train: 0.75, test: 0.25}
""")
# The tiny preset's random CLIP maps every image close to every other (cosines 0.97-0.999
# between unrelated photos, 0.9998 for a near copy), so its tests use a threshold in between.
TINY_THRESHOLD = 0.997  # the tiny CLIP puts every pair of images within 0.97-0.999: this refills several rows


def rows(out, columns=None):
    """Every row of a dataset folder's shards, in shard order."""
    import pyarrow.parquet as pq

    files = sorted((out / "data").glob("*/*.parquet"))
    return [row for f in files for row in pq.read_table(f, columns=columns).to_pylist()]


def shard_bytes(out):
    """Each shard's bytes by its name."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "data").glob("*/*.parquet"))}


@contextmanager
def crash_at_shard(n: int):
    """The n-th shard a run finishes fails before it is kept, as a power cut there would; the test's
    ``generate`` inside the block must raise that failure."""
    from facesynth.generation import runner

    real, calls = runner.ShardSink._finish, {"n": 0}

    def finish(self):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("power cut")
        return real(self)

    runner.ShardSink._finish = finish
    try:
        with pytest.raises(RuntimeError, match="power cut"):
            yield
    finally:
        runner.ShardSink._finish = real


def cache_repo(cache, repo_id, commit, save, kind="models"):
    """A Hub repo in a local cache, as huggingface_hub lays it out: refs/main names the snapshot ``save`` fills."""
    root = cache / f"{kind}--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    save(snapshot)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


def invoke(args):
    """Run the real ``facesynth`` entry point in-process; returns the exit status."""
    from facesynth.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main.main(args=args, prog_name="facesynth")
    return exit_info.value.code


def reject(out, sample_ids, reason="", verdict="reject"):
    """Write a reviewer's verdict on the rows the folder holds now for these samples, as the gallery does."""
    from facesynth.review.verdicts import Verdict, append_verdicts, image_digest

    found = {r["sample_id"]: r for r in rows(out, ["sample_id", "attempt", "image"]) if r["sample_id"] in sample_ids}
    return append_verdicts(out, [Verdict(sid, found[sid]["attempt"], image_digest(found[sid]["image"]["bytes"]),
                                         verdict, reason) for sid in sample_ids])


@contextmanager
def tmpfs(path, size: str = "4m", read_only: bool = False):
    """A real tmpfs of ``size`` mounted at ``path`` (needs root and mount rights; the test is skipped
    otherwise), unmounted afterwards: full disks and read-only folders without any injection."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "facesynth-test", str(path)],
                         capture_output=True, text=True)
    if got.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({got.stderr.strip() or 'mount failed'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path, options: str) -> None:
    import subprocess

    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)


def fill_disk(folder, leave: int = 0) -> None:
    """Fill the file system of ``folder`` but for ``leave`` bytes."""
    import os

    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize - leave
    with open(os.path.join(folder, "filler"), "wb") as f:
        while free > 0:
            chunk = min(free, 1 << 20)
            try:
                f.write(b"\0" * chunk)
                f.flush()
            except OSError:
                break
            free -= chunk


def as_older_format(root, fmt: int) -> None:
    """Rewrite this version's folder (the columns of format 6 on) as format ``fmt`` (5 or below) wrote it:
    ``batch`` and ``unet_calls`` lists, a null ``face_box`` and ``safety_score``, null speed-ups (none before
    format 5). The README is removed: its YAML declares this version's columns, where an old folder's declared its own."""
    import hashlib
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = json.loads((root / "manifest.json").read_text())
    for name, record in manifest["shards"].items():
        t = pq.read_table(root / name)
        n, cols = t.num_rows, {c: t.column(c) for c in t.column_names}
        cols["batch"] = pa.array([b.split() for b in cols["batch"].to_pylist()], pa.list_(pa.string()))
        cols["unet_calls"] = pa.array([[int(c) for c in u.split()] for u in cols["unet_calls"].to_pylist()],
                                      pa.list_(pa.int32()))
        cols["face_box"] = pa.nulls(n, pa.list_(pa.int32()))
        cols["safety_score"] = pa.nulls(n, pa.float32())
        speedups = {"prune_at": pa.float32(), "keep": pa.int32(), "cfg_until": pa.float32()}
        for key, kind in speedups.items():
            cols[key] = pa.nulls(n, kind)
        at = t.column_names.index("clip_embedding") + 1
        order = [*t.column_names[:at], "face_box", "safety_score", *t.column_names[at:]]
        order = [c for c in order if fmt >= 5 or c not in speedups]
        pq.write_table(pa.table({k: cols[k] for k in order}), root / name)
        record["sha256"] = hashlib.sha256((root / name).read_bytes()).hexdigest()
        record["bytes"] = (root / name).stat().st_size
    manifest["format"] = fmt
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "README.md").unlink()


# Verifiers -----------------------------------------------------------------------------------
def tiny_classifier(path, classes=("happy", "Sad", "anger", "surprise", "neutral"), scale: float = 4.0,
                    calibration=None):
    """A random ViTForImageClassification (32x32 input) saved as a local folder with safetensors weights.

    ``scale`` is the spread of its logits over ``calibration`` (images (N, 3, 32, 32) in [0, 1]; default noise):
    the larger, the more confident its verdicts.
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, id2label=dict(enumerate(classes)),
                       label2id={c: i for i, c in enumerate(classes)})
    torch.manual_seed(0)
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():  # centre and scale the head on noise images, so verdicts vary from image to image
        images = torch.rand(64, 3, 32, 32) if calibration is None else calibration
        features = model.vit(pixel_values=images * 2 - 1).last_hidden_state[:, 0]
        weight = torch.randn(len(classes), features.shape[1]) * scale / (features.std(0) * features.shape[1] ** 0.5)
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(-weight @ features.mean(0))
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return path


def pickled_classifier(path):
    """A tiny ViT image classifier saved with pickled weights only (pytorch_model.bin), as older repos hold."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32))
    model.config.architectures = ["ViTForImageClassification"]
    model.config.save_pretrained(path)  # a pickled checkpoint, as older repos hold
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def tiny_images(root, size: int = 32):
    """Every image of a dataset folder as a tensor (N, 3, size, size) in [0, 1]: calibration for tiny_classifier."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    pictures = [np.asarray(Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB").resize((size, size)))
                for r in rows(root, ["image"])]
    return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255


# Adapters ------------------------------------------------------------------------------------
def tiny_lora(path, seed: int = 1, scale: float = 1.0, text_encoder: bool = False, width: int | None = None,
              name: str = "pytorch_lora_weights.safetensors"):
    """A random rank-4 LoRA for the tiny UNet's attention (and text encoder), made with PEFT and saved the way
    diffusers' ``save_lora_weights`` saves one. ``width`` gives its down weights another input width: an
    adapter made for another model. Returns the file's path."""
    from pathlib import Path

    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from facesynth import tiny

    pipe = tiny.build_pipeline()
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                        init_lora_weights=False)
    pipe.unet.add_adapter(config)
    layers = {k: v * scale for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)).items()}
    if width is not None:
        layers = {k: torch.randn(v.shape[0], width) if ".down." in k else v for k, v in layers.items()}
    text = None
    if text_encoder:
        encoder = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False), pipe.text_encoder)
        text = {k: v * scale for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder)).items()}
    Path(path).mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(str(path), unet_lora_layers=layers, text_encoder_lora_layers=text,
                                              weight_name=name, safe_serialization=True)
    return Path(path) / name


def transformer_lora(build, folder):
    """A random rank-4 LoRA for the attention of a tiny transformer pipeline (``tiny.build_sd3_pipeline`` or
    ``tiny.build_flux_pipeline``), made with PEFT and saved with the pipeline's own ``save_lora_weights``."""
    from pathlib import Path

    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    maker = build()
    torch.manual_seed(3)
    maker.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                             target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = {k: v * 3 for k, v in get_peft_model_state_dict(maker.transformer).items()}
    type(maker).save_lora_weights(str(folder), transformer_lora_layers=layers, safe_serialization=True)
    return Path(folder) / "pytorch_lora_weights.safetensors"


def check_fused_lora(build, path, model: str, **call):
    """The adapter fuses into a fresh ``build()`` pipeline: no adapter layers stay, the image changes, and the
    fused pipeline is deterministic."""
    import numpy as np
    import torch

    from facesynth.generation.adapters import Adapter, apply

    def pixels(pipe):
        return pipe("a smiling face", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0), **call).images

    plain, adapted = build(), build()
    apply(adapted, [Adapter(path.name, "file", 1.0, "--lora", path=str(path))], model)
    assert adapted.get_list_adapters() == {}
    assert np.abs(pixels(adapted) - pixels(plain)).max() > 0.01
    assert np.array_equal(pixels(adapted), pixels(adapted))


# Shared by several test modules -----------------------------------------------------------
GOOD = textwrap.dedent("""\
    name: mini
    primary: emotion
    attributes:
      emotion:
        values:
          happy: [smiling, joyful]
          sad: frowning
      gender:
        values:
          male:
          female: {phrases: [woman], generation: {guidance: 9}}
    template: "photo of a {gender}, {emotion}"
    negative_prompt: "(blurry:1.3)"
    generation: {steps: 10}
    balance:
      cross: [emotion, gender]
    splits: {train: 0.5, validation: 0.25, test: 0.25}
""")


def other_clip(path):
    """A CLIP of the tiny preset's shape with other weights, saved as a local folder (safetensors)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    from facesynth import tiny

    model, tokenizer, _ = tiny.build_clip()
    torch.manual_seed(1)
    CLIPModel(model.config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def get(url, host=None):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("content-type"), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type"), exc.read()


def post(url, body, content_type="application/json"):
    import json
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# Identity sets ------------------------------------------------------------------------------
def tiny_onnx_embedder(path, size: int = 32, channels: int = 3, seed: int = 0, detail: bool = False):
    """A tiny random convolutional face embedder exported to ONNX with torch.onnx.export (as an ArcFace export
    would be: one N x 3 x H x W input of a fixed size, one embedding output). ``detail``: a fixed Laplacian
    instead, whose embedding is the image's fine detail, so near-copies from the tiny model differ measurably."""
    import warnings

    import torch

    torch.manual_seed(seed)
    if detail:
        laplacian = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        with torch.no_grad():
            laplacian.weight.copy_(torch.tensor([[0., -1, 0], [-1, 4, -1], [0, -1, 0]]).expand(channels, 1, 3, 3))
        model = torch.nn.Sequential(laplacian, torch.nn.AvgPool2d(2), torch.nn.Flatten()).eval()
    else:
        model = torch.nn.Sequential(torch.nn.Conv2d(channels, 8, 5, stride=2), torch.nn.ReLU(),
                                    torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.AdaptiveAvgPool2d(2),
                                    torch.nn.Flatten(), torch.nn.Linear(64, 16)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, channels, size, size), str(path), dynamo=False,
                          input_names=["image"], output_names=["embedding"], dynamic_axes={"image": {0: "batch"}})
    return path


def identity_recipe(text: str = None, **identities) -> str:
    """The ``emotions`` recipe as YAML text with an ``identities:`` section (vary emotion by default)."""
    import yaml

    from facesynth.recipe import resolve

    data = yaml.safe_load(resolve("emotions")[1])
    data["identities"] = {"vary": ["emotion"], **identities}
    return yaml.safe_dump(data, sort_keys=False)


def tiny_ip_adapter(folder, embed_dim: int = 32, wide: bool = False):
    """A random IP-Adapter for the tiny UNet, saved the way IP-Adapter repos hold one: ``ip-adapter.safetensors``
    (``image_proj.*`` and ``ip_adapter.*`` tensors, as diffusers' tests build them) and a tiny CLIP image encoder in
    ``image_encoder/`` (safetensors). ``wide``: made for a model with twice the tiny UNet's text width."""
    from pathlib import Path

    import torch
    from diffusers.models.attention_processor import IPAdapterAttnProcessor
    from diffusers.models.embeddings import ImageProjection
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from facesynth import tiny

    unet = tiny.build_pipeline().unet
    cross, channels = unet.config.cross_attention_dim * (2 if wide else 1), list(unet.config.block_out_channels)
    torch.manual_seed(7)
    state, key = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        weights = IPAdapterAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, scale=1.0).state_dict()
        state[f"ip_adapter.{key}.to_k_ip.weight"] = weights["to_k_ip.0.weight"] * 8
        state[f"ip_adapter.{key}.to_v_ip.weight"] = weights["to_v_ip.0.weight"] * 8
        key += 2
    projection = ImageProjection(cross_attention_dim=cross, image_embed_dim=embed_dim, num_image_text_embeds=4)
    for ours, theirs in (("proj.weight", "image_embeds.weight"), ("proj.bias", "image_embeds.bias"),
                         ("norm.weight", "norm.weight"), ("norm.bias", "norm.bias")):
        state[f"image_proj.{ours}"] = projection.state_dict()[theirs].contiguous()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "ip-adapter.safetensors")
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, image_size=32, patch_size=8,
        projection_dim=embed_dim))
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    return folder


# Object storage ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server on 127.0.0.1 (moto's server mode), reached through the clients users run."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path, request):
    """A fresh bucket on the local S3 server, credentials and endpoint in the environment as users set them;
    returns ``s3://BUCKET``. Each test's staging folders live under its tmp_path."""
    import re

    import fsspec

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing-secret"),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", s3_server),
                       ("FACESYNTH_STAGE", str(tmp_path / "stages"))):
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    import hashlib

    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a cached client keeps the credentials it was made with
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    bucket = (re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") or "bucket") + "-" + digest
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(bucket)
    fs.invalidate_cache()
    return f"s3://{bucket}"


def store_files(url: str) -> dict[str, bytes]:
    """Every object under ``url``, by name relative to it."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {p[len(root) + 1:]: fs.cat_file(p) for p in sorted(fs.find(root))}


def local_files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith(".facesynth/")}


def same_data(stored: dict[str, bytes], local) -> None:
    """The store holds the local run's shards, byte for byte, and a manifest that lists the same shards."""
    import json

    here = local_files(local)
    shards = sorted(n for n in here if n.startswith("data/"))
    assert sorted(n for n in stored if n.startswith("data/")) == shards
    assert all(stored[n] == here[n] for n in shards)
    ours, theirs = json.loads(stored["manifest.json"]), json.loads(here["manifest.json"])
    assert ours["shards"] == theirs["shards"] and ours["complete"] is True
    assert ours["fingerprint"] == theirs["fingerprint"]


def put_in_store(folder, url):
    """A finished dataset copied into a store as a user's sync tool would (facesynth's work files left out)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and not name.startswith(".facesynth/"):
            fs.put_file(str(path), f"{root}/{name}")
