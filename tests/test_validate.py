"""validate, reproduce, damaged shards and --repair, full disk, unwritable folders, out of memory."""

import ctypes
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import invoke, make_engine
from facesynth.errors import OutputError
from facesynth.generation import GenerateConfig, generate
from facesynth.plan import Plan
from facesynth.reproduce import reproduce
from facesynth.validate import validate

DEMO = dict(recipe="emotions", num_samples=24, model="tiny", quiet=True, rows_per_shard=8, batch_size=12)


def _rewrite(root, name, table):
    """Replace a shard with ``table`` and make the manifest agree, so only content problems remain."""
    path = root / name
    pq.write_table(table, path)
    manifest = json.loads((root / "manifest.json").read_text())
    data = path.read_bytes()
    manifest["shards"][name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), rows=table.num_rows)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _png(size):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), "gray").save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_a_generated_folder_is_valid_and_rows_reproduce_exactly(demo_dataset, capsys):
    report = validate(demo_dataset, reproduce=3, seed=1)
    assert report.ok, [str(p) for p in report.problems]
    assert (report.rows, report.shards, report.images, report.reproduced) == (24, 12, 24, 3)
    assert invoke(["validate", str(demo_dataset), "--reproduce", "2", "-q"]) == 0
    assert "valid (24 rows in 12 shards, 24 images decoded, 2 rows regenerated)" in capsys.readouterr().out


def test_reproduce_regenerates_one_row_from_its_columns_and_the_manifest(demo_dataset, tmp_path, capsys):
    row = pq.read_table(demo_dataset / "data" / "sad" / "validation-00000.parquet").to_pylist()[0]
    png = tmp_path / "row.png"
    assert invoke(["reproduce", str(demo_dataset), row["sample_id"], "--out", str(png)]) == 0
    assert f"{row['sample_id']}: identical to the stored image" in capsys.readouterr().out
    stored = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
    assert np.array_equal(np.asarray(Image.open(png)), stored)
    result = reproduce(demo_dataset, row["sample_id"])
    assert result.identical and result.seed == row["seed"]
    assert result.clip_score == pytest.approx(row["clip_score"], abs=1e-6)
    assert invoke(["reproduce", str(demo_dataset), "emotions-9999999"]) == 2
    assert capsys.readouterr().err == f"Error: sample_id: 'emotions-9999999' is not in '{demo_dataset}'\n"


def test_validate_lists_every_problem(demo_copy, capsys):
    truncated = demo_copy / "data" / "angry" / "train-00000.parquet"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    # a shard with a duplicated row, a lost row and an image at the wrong size, checksums updated
    table = pq.read_table(demo_copy / "data" / "happy" / "train-00000.parquet")
    rows = table.to_pylist()
    lost = rows.pop()
    rows.append(dict(rows[0]))
    rows[2]["image"] = {"bytes": _png(32), "path": None}
    _rewrite(demo_copy, "data/happy/train-00000.parquet", pa.Table.from_pylist(rows, schema=table.schema))
    # a shard whose schema is not the declared features
    table = pq.read_table(demo_copy / "data" / "sad" / "validation-00000.parquet")
    table = table.set_column(table.schema.get_field_index("clip_score"), "clip_score",
                             table["clip_score"].cast(pa.float64()))
    _rewrite(demo_copy, "data/sad/validation-00000.parquet", table)
    (demo_copy / "data" / "extra.parquet").write_bytes(b"stray")
    report = validate(demo_copy)
    problems = [str(p) for p in report.problems]
    expected = [
        "data/angry/train-00000.parquet: damaged: 5000 bytes, the manifest says",
        f"{rows[0]['sample_id']}: sample_id appears 2 times",
        "data/: 1 planned rows are missing: ",  # the lost row; a damaged shard's rows are reported with it, once
        f"data/happy/train-00000.parquet: {rows[2]['sample_id']}: image is 32x32, the row says 64x64",
        "data/sad/validation-00000.parquet: schema differs from the declared features (clip_score)",
        "data/extra.parquet: file in data/ that the manifest does not record",
        "README.md: not compared with the data while shards are damaged",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, "\n".join(problems))
    assert any(p.startswith("data/: ") and lost["sample_id"] in p for p in problems)
    assert any(p.startswith("train ") and "rows, the plan has" in p for p in problems)
    assert sum(p.startswith("data/angry/train-00000.parquet") for p in problems) == 1  # once, not once per row
    assert not any(p.startswith("validation sad/") for p in problems)  # unread shards' cells are not recounted
    assert report.shards == 10  # of 12: the truncated and the mis-typed shard are not counted as read

    assert invoke(["validate", str(demo_copy), "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("problem: ") == len(problems)
    assert f"{len(problems)} problem(s)" in captured.err


def test_validate_catches_a_card_that_disagrees_with_the_data(demo_copy):
    card = demo_copy / "README.md"
    text = card.read_text()
    assert "num_examples: " in text
    card.write_text(text.replace("num_examples: ", "num_examples: 1", 1))
    assert [str(p) for p in validate(demo_copy).problems] == [
        "README.md: YAML `dataset_info` (features, split sizes) disagrees with the data; run `facesynth card DIR`"]
    assert invoke(["card", str(demo_copy)]) == 0
    assert validate(demo_copy).ok


def test_generate_refuses_a_damaged_shard_and_repair_regenerates_only_it(demo_copy, demo_dataset):
    shard = demo_copy / "data" / "happy" / "train-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, altered content
    shard.write_bytes(bytes(data))
    with pytest.raises(OutputError, match=r"damaged shard\(s\): data/happy/train-00000.parquet \(sha256 differs "
                                          r"from the manifest\); run the same command with --repair"):
        generate(GenerateConfig(out=demo_copy, **DEMO))
    others = {p: p.stat().st_mtime_ns for p in (demo_copy / "data").glob("*/*.parquet") if p != shard}
    result = generate(GenerateConfig(out=demo_copy, repair=True, **DEMO))
    assert (result.shards_written, result.shards_skipped) == (1, 11)
    assert shard.read_bytes() == (demo_dataset / "data" / "happy" / "train-00000.parquet").read_bytes()
    assert others == {p: p.stat().st_mtime_ns for p in (demo_copy / "data").glob("*/*.parquet") if p != shard}
    assert validate(demo_copy).ok


def _cli(args, preexec_fn=None, env=None):
    return subprocess.run([sys.executable, "-m", "facesynth.cli", *args], capture_output=True, text=True,
                          preexec_fn=preexec_fn, env=env)


def _file_size_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_full_disk_is_one_clear_line_and_leaves_no_partial_shard(tmp_path, demo_dataset):
    out = tmp_path / "full"
    args = ["generate", "emotions", "--model", "tiny", "-n", "24", "--rows-per-shard", "8", "--batch-size", "12",
            "-o", str(out), "-q"]
    proc = _cli(args, preexec_fn=_file_size_limit(60_000))  # files above 60 kB cannot be written
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: --out: cannot write to '{out}': File too large; the unfinished shard was "
                           "removed and finished shards are kept: free space, then run the same command to resume\n")
    assert not (out / "data").exists() or not any((out / "data").iterdir())
    assert not [p for p in (out / ".facesynth" / "tmp").rglob("*") if p.is_file()]
    generate(GenerateConfig(out=out, **DEMO))  # space again: the same run finishes the dataset
    assert json.loads((out / "manifest.json").read_text())["shards"] == \
        json.loads((demo_dataset / "manifest.json").read_text())["shards"]


def _drop_root_override():
    """Run the child as root without CAP_DAC_OVERRIDE, so folder permissions bind it like anyone else."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, dropped from the bounding set before exec
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl")


@pytest.mark.slow
def test_an_unwritable_output_folder_is_one_clear_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        proc = _cli(["generate", "emotions", "--model", "tiny", "-n", "4", "-o", str(locked), "-q"],
                    preexec_fn=_drop_root_override if os.geteuid() == 0 else None)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot drop root's permission override here: {exc}")
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 2
    assert proc.stderr == f"Error: --out: cannot write to '{locked}': permission denied\n"
    assert list(locked.iterdir()) == []


@pytest.mark.slow
def test_out_of_memory_halves_the_call_and_the_row_still_reproduces(tiny_pipe, tiny_scorer, emotions, caplog):
    samples = Plan(emotions, 4).samples
    normal = make_engine(tiny_pipe, tiny_scorer, emotions).generate(samples, 0)
    engine = make_engine(tiny_pipe, tiny_scorer, emotions)
    real_call = engine._call

    def small_memory(conds, seeds, settings, samples=None, ip=None):  # a device that holds at most 4 images a call
        if len(seeds) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_call(conds, seeds, settings, samples, ip)

    engine._call = small_memory
    with caplog.at_level("WARNING", logger="facesynth.generation.engine"):
        halved = engine.generate(samples, 0)
    assert [r.message for r in caplog.records] == [
        "out of memory at 12 images per call; continuing with 6",
        "out of memory at 6 images per call; continuing with 3",
    ]
    assert engine.max_images == 3 and halved[0].unet_calls == [3, 3, 3, 3]
    for a, b in zip(normal, halved):
        assert a.seed == b.seed and a.candidate_index == b.candidate_index
        assert np.abs(a.pixels.astype(int) - b.pixels.astype(int)).max() <= 2
    again = make_engine(tiny_pipe, tiny_scorer, emotions).generate(samples, 0, calls=halved[0].unet_calls)
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(halved, again))  # what reproduce relies on


@pytest.mark.slow
def test_bf16_on_cpu_generates_and_reproduces_exactly(tmp_path):
    """bf16 on the CPU (fast where the CPU has AMX): CLIP resizes in fp32, and reproduce keeps bf16."""
    out = tmp_path / "bf16"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=6, model="tiny", quiet=True, dtype="bf16",
                            device="cpu"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runtime"]["dtype"] == "bfloat16"
    report = validate(out, reproduce=2, seed=0, device="cpu")
    assert report.ok and report.reproduced == 2, [str(p) for p in report.problems]


def _write_labels(root, name, column, values):
    """Rewrite one label column of a shard with raw ids (out of range, or null), checksums updated."""
    table = pq.read_table(root / name)
    index = table.schema.get_field_index(column)
    table = table.set_column(index, table.schema.field(index), pa.array(values, type=table.schema.field(index).type))
    _rewrite(root, name, table)
    return table["sample_id"].to_pylist()


def test_validate_reports_rows_with_bad_label_ids(demo_copy, capsys):
    name = "data/happy/train-00000.parquet"
    n = pq.read_metadata(demo_copy / name).num_rows
    ids = _write_labels(demo_copy, name, "emotion", [99, None] + [0] * (n - 2))
    problems = [str(p) for p in validate(demo_copy).problems]
    assert f"{name}: {ids[0]}: emotion is 99, not a label id (0..3)" in problems
    assert f"{name}: {ids[1]}: emotion is None, not a label id (0..3)" in problems
    assert invoke(["validate", str(demo_copy), "-q", "--no-images"]) == 1
    assert "unexpected" not in capsys.readouterr().err


def test_validate_flags_temp_files_left_by_interrupted_writes(demo_copy):
    (demo_copy / ".manifest.json.12345.tmp").write_text("{")
    (demo_copy / "data" / "happy" / ".train-00000.parquet.ab12cd.tmp").write_bytes(b"PAR1")
    problems = [str(p) for p in validate(demo_copy).problems]
    assert problems == [
        ".manifest.json.12345.tmp: temp file left by an interrupted write (not part of the dataset); delete it",
        "data/happy/.train-00000.parquet.ab12cd.tmp: temp file left by an interrupted write (not part of the dataset); "
        "delete it",
    ]


def test_a_damaged_manifest_plan_names_the_manifest_not_a_generate_option(demo_copy, capsys):
    from conftest import invoke

    manifest = json.loads((demo_copy / "manifest.json").read_text())
    manifest["plan"]["num_samples"] = 0
    (demo_copy / "manifest.json").write_text(json.dumps(manifest))
    assert invoke(["validate", str(demo_copy)]) == 2
    err = capsys.readouterr().err
    assert err == (f"Error: '{demo_copy / 'manifest.json'}': damaged: its plan (0 samples, seed "
                   f"{manifest['plan']['seed']}) cannot be rebuilt (must be at least 1 (got 0)), so the rows cannot "
                   "be checked against it\n")


def test_a_ten_megabyte_reason_is_shortened_where_it_is_printed(demo_copy, capsys):
    from conftest import invoke, reject, rows

    sid = rows(demo_copy, ["sample_id"])[0]["sample_id"]
    reject(demo_copy, [sid])
    with open(demo_copy / "verdicts.jsonl", "a") as f:  # written by hand: no 500-character limit
        row = json.loads((demo_copy / "verdicts.jsonl").read_text().splitlines()[0])
        f.write(json.dumps({**row, "reason": "blurry " + "x" * 10_000_000}) + "\n")
    assert invoke(["validate", str(demo_copy), "--no-images"]) == 1
    out = capsys.readouterr().out
    assert "rejected in review (blurry xxx" in out and len(out) < 5000


def test_a_float32_prune_at_gives_the_engine_validate_and_the_card_one_step(tmp_path):
    """0.7 of 5 steps is 3.5 in float64 but 3.4999999 as the float32 the column stores: one function rounds the
    stored value everywhere, so validate agrees with the run."""
    import numpy as np

    from facesynth.recipe import switch_step

    assert switch_step(0.7, 5) == switch_step(float(np.float32(0.7)), 5) == 3
    out = tmp_path / "p"
    generate(GenerateConfig(recipe="emotions", out=out, num_samples=4, model="tiny", quiet=True, steps=5,
                            prune_at=0.7, keep=1, candidates=3))
    report = validate(out, images=False)
    assert report.ok, [str(p) for p in report.problems]
    assert "after 3 of 5 steps" in (out / "README.md").read_text()


def test_validate_of_a_folder_being_written_is_one_line_naming_the_writer(demo_copy, capsys):
    from conftest import invoke

    from facesynth.folder.lock import FolderLock

    capsys.readouterr()
    with FolderLock(demo_copy):
        assert invoke(["validate", str(demo_copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"Error: '{demo_copy}': a facesynth process (pid {os.getpid()}) is writing it; validate it when "
                   "that finishes")


def test_a_killed_card_leaves_no_work_folder_behind_the_next_run(demo_copy, capsys):
    """kill -9 of ``card`` leaves its lock file in .facesynth/ (the kernel drops the lock, not the file); the next
    run that holds the folder removes it and the empty folder."""
    from conftest import invoke

    (demo_copy / ".facesynth").mkdir()
    (demo_copy / ".facesynth" / "lock").write_text("12345\n")
    assert invoke(["card", str(demo_copy)]) == 0
    assert not (demo_copy / ".facesynth").exists()
