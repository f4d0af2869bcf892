"""LoRA adapters: tiny random adapters made with PEFT, loaded through diffusers' PEFT backend, fused."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import crash_at_shard, invoke, rows, shard_bytes, tiny_lora

pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # the unfused pipeline's own load


def _generate(out, *extra, n=12):
    return invoke(["generate", "emotions", "--model", "tiny", "-n", str(n), "--out", str(out), "-q",
                   "--rows-per-shard", "4", *extra])


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    return tiny_lora(tmp_path_factory.mktemp("lora") / "face", scale=3.0)


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    return tiny_lora(tmp_path_factory.mktemp("lora") / "style", seed=2, scale=3.0, text_encoder=True,
                     name="style.safetensors")


def _pixels(pipe, prompt="a smiling face"):
    g = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=4, generator=g, output_type="np", height=64, width=64).images[0]


def test_fused_adapters_equal_their_unfused_layers_within_float_rounding(lora, second):
    """What fusing changes: the same adapters as PEFT layers (unfused) and fused into the weights, compared where
    they act (the text encoder's and the UNet's outputs), and the images they make."""
    from facesynth import tiny
    from facesynth.generation.adapters import Adapter, apply

    base = tiny.build_pipeline()
    unfused = tiny.build_pipeline()
    for i, (path, weight) in enumerate([(lora, 0.8), (second, 0.5)]):
        unfused.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"u{i}")
    unfused.set_adapters(["u0", "u1"], adapter_weights=[0.8, 0.5])
    fused = tiny.build_pipeline()
    apply(fused, [Adapter(p.name, "file", w, "--lora", path=str(p)) for p, w in [(lora, 0.8), (second, 0.5)]],
          "tiny")
    assert fused.get_list_adapters() == {}  # the adapter layers are gone: a step costs what it costs without them
    ids = base.tokenizer(["a smiling face"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    latents, t = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 20])
    with torch.no_grad():
        text = [p.text_encoder(ids)[0] for p in (base, unfused, fused)]
        noise = [p.unet(latents, t, text[0].expand(2, -1, -1))[0] for p in (base, unfused, fused)]
    for (b, u, f) in (text, noise):
        assert (u - b).abs().max() > 0.1  # the adapters change what each model computes
        assert (f - u).abs().max() < 1e-4  # fusing changes it by float rounding only (2e-6 to 2e-5 measured)
    x_base, x_fused = _pixels(base), _pixels(fused)
    assert np.abs(x_fused - x_base).max() > 0.02  # the adapters change the image
    assert np.array_equal(_pixels(fused), x_fused)  # and a fused model is deterministic


def test_weight_zero_is_the_model_itself_and_weights_scale_the_change(lora):
    from facesynth import tiny
    from facesynth.generation.adapters import Adapter, apply

    x_base = _pixels(tiny.build_pipeline())
    change = {}
    for weight in (0.0, 0.5, 1.0):
        pipe = tiny.build_pipeline()
        apply(pipe, [Adapter(lora.name, "file", weight, "--lora", path=str(lora))], "tiny")
        change[weight] = np.abs(_pixels(pipe) - x_base).mean()
    assert change[0.0] == 0.0 and 0 < change[0.5] < change[1.0]


@pytest.mark.slow
def test_a_run_with_adapters_is_pinned_resumes_to_the_same_bytes_and_reproduces(tmp_path, lora, second):
    plain, out = tmp_path / "plain", tmp_path / "lora"
    assert _generate(plain) == 0
    args = ["--lora", f"{lora}@0.8", "--lora", f"{second}@0.5"]
    assert _generate(out, *args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    plain_manifest = json.loads((plain / "manifest.json").read_text())
    assert "loras" not in plain_manifest["parameters"] and "loras" not in plain_manifest
    from facesynth.folder.writer import sha256_file

    assert manifest["parameters"]["loras"] == [
        {"name": "pytorch_lora_weights.safetensors", "sha256": sha256_file(lora), "weight": 0.8},
        {"name": "style.safetensors", "sha256": sha256_file(second), "weight": 0.5}]
    assert [(r["kind"], r["path"]) for r in manifest["loras"]] == [("file", str(lora)), ("file", str(second))]
    assert manifest["fingerprint"] != plain_manifest["fingerprint"]
    images = {r["sample_id"]: r["image"]["bytes"] for r in rows(out, ["sample_id", "image"])}
    assert all(b != images[r["sample_id"]] for r in rows(plain, ["sample_id", "image"]) for b in [r["image"]["bytes"]])

    card = (out / "README.md").read_text()
    assert "| LoRA adapters | <code>pytorch_lora_weights.safetensors</code> at 0.8 (sha256 <code>" in card
    assert "<code>style.safetensors</code> at 0.5 (sha256 <code>" in card

    crashed = tmp_path / "crashed"  # a run killed at its second shard, resumed, gives the same bytes
    from facesynth.generation import GenerateConfig, generate

    config = GenerateConfig(recipe="emotions", out=crashed, num_samples=12, model="tiny", quiet=True,
                            rows_per_shard=4, lora=tuple(args[1::2]))
    with crash_at_shard(2):
        generate(config)
    generate(config)
    assert shard_bytes(crashed) == shard_bytes(out)

    from facesynth.reproduce import Reproducer

    reproducer = Reproducer(out, device="cpu")
    sid = next(iter(images))
    assert reproducer.reproduce(reproducer.rows([sid])[sid]).identical

    changed = tmp_path / "changed.safetensors"  # the same name, other bytes: another dataset
    shutil.copy(second, changed)
    tiny_lora(tmp_path / "other", seed=5, name="style.safetensors")
    shutil.copy(tmp_path / "other" / "style.safetensors", second)
    assert _generate(out, *args) == 2  # resuming with a changed adapter is refused like any changed parameter
    with pytest.raises(Exception, match="the adapter file changed since the folder was made"):
        Reproducer(out, device="cpu")
    shutil.copy(changed, second)


def test_a_recipe_lists_adapters_and_lora_replaces_them(tmp_path, lora, second):
    from facesynth.generation.adapters import check, chosen
    from facesynth.recipe import load_recipe, resolve

    _, text = resolve("emotions")
    path = tmp_path / "r.yaml"
    path.write_text(text + f"loras:\n  - {lora}@0.7\n  - {{source: '{second}', weight: -0.5}}\n")
    recipe = load_recipe(path)
    from_recipe = check(chosen((), recipe, str(path)))
    assert [(a.name, a.weight, a.where) for a in from_recipe] == [
        (lora.name, 0.7, f"{path}: loras[0]"), (second.name, -0.5, f"{path}: loras[1]")]
    assert [a.weight for a in check(chosen((f"{second}",), recipe, str(path)))] == [1.0]
    assert recipe.fingerprint() != load_recipe("emotions").fingerprint()
    hub = check(chosen(("org/name/sub/face.safetensors@0.3",), recipe, str(path)))[0]
    assert (hub.kind, hub.name, hub.file, hub.weight) == ("hub", "org/name", "sub/face.safetensors", 0.3)


@pytest.fixture
def bad_adapters(tmp_path, lora):
    pickled = tmp_path / "face.bin"
    torch.save({"lora.down.weight": torch.zeros(1)}, pickled)
    only_pickle = tmp_path / "pickled"
    only_pickle.mkdir()
    torch.save({"lora.down.weight": torch.zeros(1)}, only_pickle / "pytorch_lora_weights.bin")
    full = tmp_path / "full.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 2)}, full)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    several = tmp_path / "several"
    several.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        shutil.copy(lora, several / name)
    half = tmp_path / "half.safetensors"  # down (lora_A) weights without their up (lora_B) halves
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32)}, half)
    return {"pickled": pickled, "only_pickle": only_pickle, "full": full, "garbage": garbage, "several": several,
            "missing": tmp_path / "nothing.safetensors", "half": half}


BAD = [
    ("{missing}", "Error: --lora {missing}: no such file or folder"),
    ("{pickled}", "Error: --lora {pickled}: only .safetensors adapters are loaded, never pickle files"),
    ("{only_pickle}", "Error: --lora {only_pickle}: has no safetensors weights (pickle files are never loaded)"),
    ("{full}", "Error: --lora {full}: holds no LoRA weights (none of its 1 tensors is named lora_*); a full "
               "checkpoint goes to --model"),
    ("{garbage}", "Error: --lora {garbage}: not a readable safetensors file ("),
    ("{several}", "Error: --lora {several}: holds 2 adapters (a.safetensors, b.safetensors); name one of them"),
    ("{missing}@x", "Error: --lora {missing}@x: no such file or folder"),  # an '@' in a name: no weight given
    ("my@face.safetensors", "Error: --lora my@face.safetensors: no such file or folder"),
    ("../gone/face.safetensors", "Error: --lora ../gone/face.safetensors: no such file or folder"),
    ("{half}", "Error: --lora {half}: 1 of its LoRA layers lack their other half (each needs a down or lora_A and an "
               "up or lora_B weight), e.g. unet.down_blocks.0.attentions.0.proj_in.lora_*.weight; the file is "
               "incomplete"),
    ("{missing}@nan", "Error: --lora {missing}@nan: weight: must be a finite number (not NaN or infinity)"),
    ("{missing}@9", "Error: --lora {missing}@9: weight: Input should be less than or equal to 8"),
    ("org/face.bin", "Error: --lora org/face.bin: only .safetensors adapters are loaded, never pickle files"),
    ("org/name/face.pt", "Error: --lora org/name/face.pt: only .safetensors adapters are loaded, never pickle files"),
    ("org/not-downloaded", "Error: --lora org/not-downloaded: cannot fetch 'org/not-downloaded' ("),
]


@pytest.mark.parametrize("arg, line", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_adapters_are_one_line_exit_2_before_the_generator_and_write_nothing(
        bad_adapters, tmp_path, capsys, monkeypatch, arg, line):
    from facesynth.generation import loading

    def no_generator(*a, **k):
        raise AssertionError("the generator was loaded")

    monkeypatch.setattr(loading, "load_pipeline", no_generator)
    out = tmp_path / "out"
    capsys.readouterr()
    assert _generate(out, "--lora", arg.format(**bad_adapters), n=8) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(line.format(**bad_adapters)), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_an_adapter_for_another_model_names_both_and_writes_nothing(tmp_path, capsys):
    wide = tiny_lora(tmp_path / "wide", width=48)  # its down weights read 48 features; the tiny UNet has 32 and 64
    foreign = tmp_path / "foreign.safetensors"  # a transformer's adapter: no layer of a UNet has its names
    from safetensors.torch import load_file

    save_file({k.replace("unet.", "transformer."): v for k, v in load_file(tiny_lora(tmp_path / "f")).items()},
              foreign)
    for path, why in [(wide, "32 of its weights have another shape, e.g. down_blocks.1.attentions.0."
                             "transformer_blocks.0.attn1.to_q: [4, 48] in the adapter, [4, 64] in the model)"),
                      (foreign, "none of its weights names a layer of this model: an adapter for another model "
                                "family?)")]:
        out = tmp_path / f"out-{path.stem}"
        capsys.readouterr()
        assert _generate(out, "--lora", str(path), n=8) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"Error: --lora {path}: does not fit the model 'tiny' ({why}", err
        assert not out.exists()


def test_a_hub_adapter_is_pinned_to_its_commit_and_loaded_there_again(tmp_path, monkeypatch):
    """An adapter from the Hub (here a real offline cache): its commit is recorded, and after the repo's main moves
    on, reproduce and a grown run still use the recorded one."""
    import huggingface_hub.constants

    from conftest import cache_repo
    from facesynth.reproduce import Reproducer
    from facesynth.folder.writer import sha256_file

    cache = tmp_path / "hub"
    first = cache_repo(cache, "org/face-lora", "a" * 40, lambda folder: tiny_lora(folder, scale=3.0))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    out = tmp_path / "hub-lora"
    assert _generate(out, "--lora", "org/face-lora@0.5", n=4) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["loras"] == [{"name": "org/face-lora", "file": None, "revision": None,
                                                "weight": 0.5}]
    weights = first / "pytorch_lora_weights.safetensors"
    assert manifest["loras"] == [{"name": "org/face-lora", "kind": "hub", "weight": 0.5,
                                  "file": "pytorch_lora_weights.safetensors", "revision": None, "commit": "a" * 40,
                                  "sha256": sha256_file(weights), "path": str(weights)}]
    card = (out / "README.md").read_text()
    assert ("<code>org/face-lora</code> (<code>pytorch_lora_weights.safetensors</code>) at 0.5 (commit "
            "<code>aaaaaaaaaaaa</code>)") in card
    before = {r["sample_id"]: r["image"]["bytes"] for r in rows(out, ["sample_id", "image"])}

    cache_repo(cache, "org/face-lora", "b" * 40, lambda folder: tiny_lora(folder, seed=9, scale=3.0))  # main moves
    reproducer = Reproducer(out, device="cpu")
    sid = next(iter(before))
    assert reproducer.reproduce(reproducer.rows([sid])[sid]).identical
    assert _generate(out, "--lora", "org/face-lora@0.5", n=8) == 0  # grown: the new rows at the recorded commit
    grown = json.loads((out / "manifest.json").read_text())
    assert grown["loras"][0]["commit"] == "a" * 40
    assert {r["sample_id"]: r["image"]["bytes"] for r in rows(out, ["sample_id", "image"])
            if r["sample_id"] in before} == before
    fresh = tmp_path / "fresh"  # a new folder resolves main again
    assert _generate(fresh, "--lora", "org/face-lora@0.5", n=8) == 0
    assert json.loads((fresh / "manifest.json").read_text())["loras"][0]["commit"] == "b" * 40


def test_a_gated_adapter_or_model_without_a_token_is_one_line(tmp_path, capsys, monkeypatch):
    import huggingface_hub
    from diffusers import DiffusionPipeline
    from huggingface_hub.errors import GatedRepoError

    try:  # the HTTP client this huggingface_hub builds its errors on
        import httpx2 as http
    except ImportError:
        import httpx as http

    def gated(repo_id, *args, **kwargs):  # what the Hub answers for a gated repo without an accepted licence
        request = http.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
        raise GatedRepoError(f"401 Client Error. Cannot access gated repo {repo_id}",
                             response=http.Response(401, request=request))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    monkeypatch.setattr(DiffusionPipeline, "download", classmethod(lambda cls, repo_id, **k: gated(repo_id)))
    for args, line in [
        (["--model", "tiny", "--lora", "org/gated-lora"],
         "Error: --lora org/gated-lora: 'org/gated-lora' is gated: accept its terms on its Hub page, then log in "
         "(`hf auth login`) or set HF_TOKEN"),
        (["--model", "org/gated-model"],
         "Error: --model: cannot load 'org/gated-model' (gated: accept its terms on its Hub page, then log in "
         "(`hf auth login`) or set HF_TOKEN); use --model tiny, a local diffusers folder or a .safetensors file"),
    ]:
        out = tmp_path / "out"
        capsys.readouterr()
        assert invoke(["generate", "emotions", "-n", "4", "--out", str(out), "--clip-model", "tiny", *args]) == 2
        assert capsys.readouterr().err.strip() == line
        assert not out.exists()


def test_an_adapter_with_huge_weights_stops_in_one_line_before_anything_is_written(tmp_path, capsys):
    """Finite weights (1e8 x a random LoRA) that overflow the UNet: every candidate is NaN, so the run stops."""
    path = tiny_lora(tmp_path / "huge", scale=1e8)
    out = tmp_path / "out"
    capsys.readouterr()
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "4", "--out", str(out), "-q", "--lora",
                   str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: the model made NaN or infinite images for all 12 candidates of a batch (")
    assert "an adapter with huge weights" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_an_adapter_named_in_capitals_or_with_an_at_sign_loads(tmp_path):
    from facesynth.generation.adapters import check, chosen
    from facesynth.recipe import load_recipe

    lora = tiny_lora(tmp_path / "a", name="Face@Detail.SAFETENSORS")
    [adapter] = check(chosen([str(lora), f"{lora}@0.5"][:1], load_recipe("emotions"), "emotions"))
    assert adapter.kind == "file" and adapter.name == "Face@Detail.SAFETENSORS" and adapter.weight == 1.0
    [weighted] = check(chosen([f"{lora}@0.5"], load_recipe("emotions"), "emotions"))
    assert weighted.weight == 0.5 and weighted.sha256 == adapter.sha256
