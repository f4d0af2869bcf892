import json
import subprocess
import sys

import datasets
import pytest

from facesynth.cli import main


def invoke(args):
    """Run the real entry point in-process and capture the exit status and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main.main(args=args, prog_name="facesynth")
    return exit_info.value.code


def test_plan_prints_counts_and_writes_jsonl(tmp_path, capsys):
    assert invoke(["plan", "emotions", "--num-samples", "1000", "-o", str(tmp_path / "p.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "recipe emotions: 1000 samples" in out
    assert any(line.split()[:2] == ["happy", "250"] for line in out.splitlines())
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 1000


def test_plan_agfd_prints_the_table(capsys):
    assert invoke(["plan", "agfd"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["left_right"][0] == "4000" and rows["left_right"][-2:] == ["2000", "2000"]
    assert rows["child"][0] == "600" and rows["child"][-2:] == ["300", "300"]


def test_generate_then_load(tmp_path, capsys):
    out = tmp_path / "demo"
    code = invoke(["generate", "emotions", "--model", "tiny", "--num-samples", "8", "--out", str(out), "--quiet"])
    assert code == 0
    assert "Load it with datasets.load_dataset" in capsys.readouterr().out
    ds = datasets.load_dataset(str(out))
    assert sum(len(d) for d in ds.values()) == 8
    assert (out / "README.md").exists() and (out / "assets" / "samples.png").exists()
    assert invoke(["card", str(out)]) == 0


BAD_ARGS = [
    (["plan", "nope"], "Error: nope: no such recipe file, and not a shipped recipe (agfd, emotions)"),
    (["plan", "emotions"], "Error: recipe 'emotions' balances a cross product: give --num-samples"),
    (["plan", "emotions", "-n", "x"], "Error: Invalid value for '--num-samples' / '-n': 'x' is not a valid integer."),
    (["plan", "emotions", "-n", "0"], "Error: --num-samples: must be at least 1 (got 0)"),
    (["plan", "agfd", "-n", "99999"], "Error: --num-samples: 99999 exceeds the 28400 samples that the strata of recipe 'agfd' add up to"),
    (["plan", "emotions", "-n", "4", "--by", "age"], "Error: Invalid value for --by: 'age' is not an attribute (emotion, gender, ethnicity)"),
    (["generate", "emotions", "-n", "4"], "Error: Missing option '--out' / '-o'."),
    (["generate", "emotions", "-n", "4", "-o", "OUT", "--scheduler", "fast"], "Error: Invalid value for '--scheduler': 'fast' is not one of"),
    (["generate", "emotions", "-n", "4", "-o", "OUT", "--steps", "0"], "Error: Invalid value for '--steps': 0 is not in the range 1<=x<=1000."),
    (["generate", "emotions", "-n", "4", "-o", "OUT", "--model", "tiny", "--candidates", "0"], "Error: --candidates: must be at least 1 (got 0)"),
    (["generate", "emotions", "-n", "4", "-o", "OUT", "--model", "tiny", "--batch-size", "0"], "Error: --batch-size: must be at least 1"),
    (["generate", "emotions", "-n", "4", "-o", "OUT", "--model", "nobody/none", "--device", "cpu"], "Error: --model: cannot load 'nobody/none'"),
    (["generate", "emotions", "-n", "4", "-o", "OUT", "--model", "tiny", "--device", "cuda"], "Error: --device: CUDA was asked for, but no CUDA GPU is available"),
    (["card", "OUT"], "Error: Invalid value for 'DIRECTORY': Directory 'OUT' does not exist."),
]


@pytest.mark.parametrize("args,message", BAD_ARGS, ids=[" ".join(a[:4]) for a, _ in BAD_ARGS])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    message = message.replace("OUT", str(tmp_path / "out"))
    assert invoke(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_recipe_file_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprimary: emotion\nattributes:\n  emotion:\n    values: {}\ntemplate: t\nbalance: {cross: [emotion]}\n")
    assert invoke(["plan", str(bad), "-n", "3"]) == 2
    assert capsys.readouterr().err == f"Error: {bad}: attributes.emotion.values: must not be empty\n"


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "facesynth.cli", "--debug", "plan", "nope"], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "RecipeError" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "facesynth.cli", "plan", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_refuses_another_recipe_in_the_same_folder(tmp_path, capsys):
    out = str(tmp_path / "ds")
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "4", "-o", out, "-q"]) == 0
    capsys.readouterr()
    assert invoke(["generate", "emotions", "--model", "tiny", "-n", "4", "-o", out, "-q", "--seed", "3"]) == 2
    assert "holds a dataset made with different seed" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["plan"]["seed"] == 1
