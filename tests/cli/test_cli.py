import json
import subprocess
import sys

import click
import datasets
import pytest

from conftest import invoke


def test_plan_prints_counts_and_writes_jsonl(tmp_path, capsys):
    assert invoke(["plan", "emotions", "--num-samples", "1000", "-o", str(tmp_path / "p.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "recipe emotions: 1000 samples" in out
    assert any(line.split()[:2] == ["happy", "250"] for line in out.splitlines())
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 1000


@pytest.mark.slow
def test_plan_agfd_prints_the_table(capsys):
    assert invoke(["plan", "agfd"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["left_right"][0] == "4000" and rows["left_right"][-2:] == ["2000", "2000"]
    assert rows["child"][0] == "600" and rows["child"][-2:] == ["300", "300"]


@pytest.mark.slow
def test_generate_then_load(tmp_path, capsys):
    out = tmp_path / "demo"
    code = invoke(["generate", "emotions", "--model", "tiny", "--num-samples", "8", "--out", str(out), "--quiet"])
    assert code == 0
    said = capsys.readouterr().out.splitlines()
    # the tiny preset's size and steps are said on the console, not only in the card
    assert said[0] == ("--model tiny: a random-weight test model, run at 64x64 with 4 steps (the recipe asks for "
                       "512x512 with 25 steps); its images are noise, not faces.")
    assert said[-1] == f"Load it with datasets.load_dataset({json.dumps(str(out))})"  # a literal, whatever the name
    ds = datasets.load_dataset(str(out))
    assert sum(len(d) for d in ds.values()) == 8
    assert (out / "README.md").exists() and (out / "assets" / "samples.png").exists()
    assert invoke(["card", str(out)]) == 0


SCHEDULERS = ("'default', 'ddim', 'pndm', 'euler', 'euler_a', 'dpm++_2m', 'dpm++_2m_karras', 'unipc', 'lcm', 'tcd', "
              "'euler_trailing', 'ddim_trailing'")
GEN = ["generate", "emotions", "-n", "4", "-o", "TMP/out"]


def usage(command, message):
    """A click usage error: one line, then click's pointer to the command's help."""
    return f"Error: {message}\nTry 'facesynth{' ' + command if command else ''} -h' for help.\n"


BAD_ARGS = [
    (["plan", "nope"], "nope: no such recipe file, and not a shipped recipe (agfd, emotions, emotions_flux)"),
    (["plan", "emotions"], "recipe 'emotions' balances a cross product: give --num-samples"),
    (["plan", "emotions", "-n", "x"],
     usage("plan", "Invalid value for '--num-samples' / '-n': 'x' is not a valid integer.")),
    (["plan", "emotions", "-n", "0"], "--num-samples: must be at least 1 (got 0)"),
    (["plan", "agfd", "-n", "99999"],
     "--num-samples: 99999 exceeds the 28400 samples that the strata of recipe 'agfd' add up to"),
    (["plan", "emotions", "-n", "4", "--by", "age"],
     usage("plan", "Invalid value for --by: 'age' is not an attribute (emotion, gender, ethnicity)")),
    (["generate", "emotions", "-n", "4"], usage("generate", "Missing option '--out' / '-o'.")),
    (GEN + ["--scheduler", "fast"],
     usage("generate", f"Invalid value for '--scheduler': 'fast' is not one of {SCHEDULERS}.")),
    (GEN + ["--steps", "0"], usage("generate", "Invalid value for '--steps': 0 is not in the range 1<=x<=1000.")),
    (GEN + ["--width", "12"], usage("generate", "Invalid value for '--width': 12 is not a multiple of 8 "
                                                "(the VAE works on 8x8 pixel blocks).")),
    (GEN + ["--height", "500"], usage("generate", "Invalid value for '--height': 500 is not a multiple of 8 "
                                                  "(the VAE works on 8x8 pixel blocks).")),
    (GEN + ["--guidance", "nan"], usage("generate", "Invalid value for '--guidance': 'nan' is not a finite number.")),
    (GEN + ["--min-label-confidence", "nan"],
     usage("generate", "Invalid value for '--min-label-confidence': 'nan' is not a finite number.")),
    (GEN + ["--dedupe-threshold", "NaN"],
     usage("generate", "Invalid value for '--dedupe-threshold': 'NaN' is not a finite number.")),
    (GEN + ["--safety-threshold", "-nan"],
     usage("generate", "Invalid value for '--safety-threshold': '-nan' is not a finite number.")),
    (GEN + ["--model", "tiny", "--candidates", "0"], "--candidates: must be between 1 and 64 (got 0)"),
    (GEN + ["--prune-at", "1"],
     usage("generate", "Invalid value for '--prune-at': 1.0 is not in the range 0<x<1.")),
    (GEN + ["--cfg-until", "nan"], usage("generate", "Invalid value for '--cfg-until': 'nan' is not a finite number.")),
    (GEN + ["--model", "tiny", "--prune-at", "0.5"], "--prune-at and --keep go together: give both or neither"),
    (GEN + ["--model", "tiny", "--keep", "1"], "--prune-at and --keep go together: give both or neither"),
    (GEN + ["--model", "tiny", "--prune-at", "0.5", "--keep", "3"],
     "--keep: must be below --candidates (3) to prune anything (got 3)"),
    (GEN + ["--model", "tiny", "-n", "2000000"],
     "--num-samples: at most 1000000 per dataset (got 2000000); split larger collections into several datasets"),
    (GEN + ["--model", "tiny", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (GEN + ["--model", "nobody/none", "--device", "cpu"],
     "--model: cannot load 'nobody/none' (not in the local cache, and HF_HUB_OFFLINE=1 forbids downloading it); "
     "use --model tiny, a local diffusers folder or a .safetensors file"),
    (GEN + ["--model", "weights.ckpt"],
     "--model: 'weights.ckpt': only .safetensors checkpoints are loaded, never pickle files"),
    (GEN + ["--model", "tiny", "--device", "cuda"], "--device: CUDA was asked for, but no CUDA GPU is available"),
    (GEN + ["--model", "tiny", "--worker-index", "1"], "--worker-index and --num-workers: give both or neither"),
    (GEN + ["--model", "tiny", "--worker-index", "2", "--num-workers", "2"],
     "--worker-index: must be in 0..1 for --num-workers 2 (got 2)"),
    (GEN + ["--model", "tiny", "--worker-index", "0", "--num-workers", "2", "--overwrite"],
     "--overwrite: not with several workers (one would delete the others' shards)"),
    (["generate", "emotions", "-n", "4", "-o", "TMP/file.txt/ds", "--model", "tiny"],
     "--out: cannot create 'TMP/file.txt/ds': Not a directory"),
    (["generate", "emotions", "-n", "4", "-o", "TMP/file.txt", "--model", "tiny"],
     usage("generate", "Invalid value for '--out' / '-o': Directory 'TMP/file.txt' is a file.")),
    (["generate", "emotions", "-n", "4", "-o", "TMP", "--model", "tiny"],
     "--out: 'TMP' is not empty (file.txt) and holds no facesynth manifest; use an empty folder (nothing was "
     "changed)"),
    (["generate", "emotions", "-n", "4", "-o", "TMP", "--model", "tiny", "--overwrite"],
     "--out: 'TMP' is not empty (file.txt) and holds no facesynth manifest; use an empty folder (nothing was "
     "changed)"),
    (["card", "TMP/out"], usage("card", "Invalid value for 'DIRECTORY': Directory 'TMP/out' does not exist.")),
    (["card", "TMP"], "'TMP': no manifest.json; is this a facesynth dataset folder?"),
    (["validate", "TMP"], "'TMP': no manifest.json; is this a facesynth dataset folder?"),
    (["validate", "TMP", "--reproduce", "-1"],
     usage("validate", "Invalid value for '--reproduce': -1 is not in the range x>=0.")),
    (["reproduce", "TMP"], usage("reproduce", "Missing argument 'SAMPLE_ID'.")),
    (["reproduce", "TMP", "x-1"], "'TMP': no manifest.json; is this a facesynth dataset folder?"),
    (["merge", "TMP"], "'TMP': no worker manifests in .facesynth/workers/; was it generated with --num-workers?"),
    (["nonsense"], usage("", "No such command 'nonsense'.")),
    (["plan", "emotions", "-n", "4", "--bogus", "--debug"],  # click's own wording, which varies by version
     usage("plan", click.NoSuchOption("--bogus", possibilities=["--verbose"]).format_message())),
]


@pytest.mark.parametrize("args,message", BAD_ARGS, ids=[" ".join(a[:4]) for a, _ in BAD_ARGS])
def test_bad_input_is_one_exact_line_and_exit_2(args, message, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a folder")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    args = [a.replace("TMP", str(tmp_path)) for a in args]
    assert invoke(args) == 2
    expected = message if message.startswith("Error: ") else f"Error: {message}\n"
    assert capsys.readouterr().err == expected.replace("TMP", str(tmp_path))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing created or deleted


def test_bad_recipe_file_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprimary: emotion\nattributes:\n  emotion:\n    values: {}\ntemplate: t\nbalance: {cross: [emotion]}\n")
    assert invoke(["plan", str(bad), "-n", "3"]) == 2
    assert capsys.readouterr().err == f"Error: {bad}: attributes.emotion.values: must not be empty\n"


@pytest.mark.parametrize("args", [["--debug", "plan", "nope"], ["plan", "nope", "--debug"],
                                  ["plan", "--debug", "nope"], ["-v", "plan", "nope", "--debug", "-v"]])
def test_debug_shows_the_traceback_wherever_it_stands(args):
    proc = subprocess.run([sys.executable, "-m", "facesynth", *args], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "RecipeError" in proc.stderr
    assert "NoSuchOption" not in proc.stderr  # the flag is known after the subcommand too


def test_python_dash_m_and_verbose_after_the_subcommand():
    proc = subprocess.run([sys.executable, "-m", "facesynth", "plan", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == ("Error: nope: no such recipe file, and not a shipped recipe "
                                                    "(agfd, emotions, emotions_flux)\n")
    proc = subprocess.run([sys.executable, "-m", "facesynth", "plan", "emotions", "-n", "4", "-v"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "recipe emotions: 4 samples" in proc.stdout


def test_plan_breaks_down_by_the_primary_label_without_a_gender(tmp_path, capsys):
    recipe = tmp_path / "moods.yaml"
    recipe.write_text("name: moods\nprimary: mood\nattributes:\n  mood:\n    values: {calm: , wild: }\n"
                      "  light:\n    values: {day: , night: }\ntemplate: '{mood} face, {light}'\n"
                      "balance: {cross: [mood, light]}\n")
    assert invoke(["plan", str(recipe), "-n", "8"]) == 0
    out = capsys.readouterr().out
    assert "light  total  train  validation  test  calm  wild" in out


def test_refuses_another_recipe_in_the_same_folder(tmp_path, capsys):
    out = str(tmp_path / "ds")
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "4", "-o", out, "-q"]) == 0
    capsys.readouterr()
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "4", "-o", out, "-q", "--seed", "3"]) == 2
    assert "holds a dataset made with different seed" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["plan"]["seed"] == 1


def test_recipes_lists_each_shipped_recipe_with_its_description_in_one_column(capsys):
    from facesynth.recipe import load_recipe, shipped_recipes

    capsys.readouterr()
    assert invoke(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = shipped_recipes()
    assert [line.split()[0] for line in lines] == names and "emotions_flux" in names
    starts = {line.index(load_recipe(name).description[:20]) for line, name in zip(lines, names)}
    assert starts == {max(map(len, names)) + 2}  # every description starts in the same column


def test_quiet_prints_nothing_but_errors_not_even_library_bars_or_warnings(tmp_path):
    """-q with a zero-shot verifier in a local folder (transformers draws a loading bar for it) and every Python
    warning turned on: stderr stays empty, stdout holds the result."""
    import os
    import subprocess
    import sys

    from conftest import other_clip

    clip = other_clip(tmp_path / "clip")
    env = {**os.environ, "PYTHONWARNINGS": "always"}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    env.pop("DIFFUSERS_VERBOSITY", None)
    got = subprocess.run([sys.executable, "-m", "facesynth.cli", "generate", "emotions", "--model", "tiny", "-n", "4",
                          "--out", str(tmp_path / "out"), "--verify-mode", "record", "--verify",
                          f"emotion=zero-shot:{clip}", "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert got.returncode == 0 and got.stderr == "", got.stderr
    assert "4 rows" in got.stdout
