"""verdicts.jsonl: append-only, fsynced, safe against a killed writer and concurrent writers; damage is one line."""

import json
import multiprocessing

import pytest

from conftest import invoke, reject, rows, shard_bytes
from facesynth.review.verdicts import (Verdict, VerdictError, append_verdicts, current_rows, image_digest, pending,
                                read_verdicts, verdicts_path)


def test_the_latest_verdict_on_a_row_wins_and_restore_undoes_a_reject(tmp_path):
    append_verdicts(tmp_path, [Verdict("a", 0, "d1", "reject", "six fingers"), Verdict("b", 0, "d2", "reject")])
    append_verdicts(tmp_path, [Verdict("a", 0, "d1", "restore")])
    lines = verdicts_path(tmp_path).read_text().splitlines()
    assert [json.loads(line)["verdict"] for line in lines] == ["reject", "reject", "restore"]  # appended, never rewritten
    assert all(json.loads(line)["time"] for line in lines)
    from facesynth.review.verdicts import Row

    now = {"a": Row(0, "d1", "s"), "b": Row(0, "d2", "s")}
    assert set(pending(read_verdicts(tmp_path), now)) == {"b"}
    assert pending(read_verdicts(tmp_path), {"b": Row(0, "other pixels", "s")}) == {}  # another image: not this row


def test_a_write_cut_off_by_a_killed_server_is_skipped_and_then_cut_away(tmp_path, caplog):
    append_verdicts(tmp_path, [Verdict("a", 0, "d1", "reject", "first")])
    with open(verdicts_path(tmp_path), "ab") as f:
        f.write(b"{\"sample_id\": \"b\", \"attem")  # the process died here, before the newline and the fsync
    assert [v.sample_id for v in read_verdicts(tmp_path)] == ["a"]
    assert "unfinished" in caplog.text
    append_verdicts(tmp_path, [Verdict("c", 0, "d3", "reject", "third")])
    text = verdicts_path(tmp_path).read_text()
    assert text.endswith("\n") and "attem\n" not in text and text.count("\n") == 2
    assert [v.sample_id for v in read_verdicts(tmp_path)] == ["a", "c"]


@pytest.mark.parametrize("line, message", [
    (b"{not json\n", "line 2: not JSON"),
    (b"[1, 2]\n", "line 2: not a JSON object"),
    (b'{"sample_id": "a", "attempt": -1, "image": "x", "verdict": "reject"}\n', "'attempt' must be"),
    (b'{"sample_id": "a", "attempt": 0, "image": "x", "verdict": "maybe"}\n', "'verdict' must be one of"),
    (b'{"sample_id": "a", "attempt": 0, "verdict": "reject"}\n', "'image' must be"),
    (b'\xff\xfe\n', "line 2: not UTF-8"),
])
def test_a_damaged_line_is_one_error_naming_the_file_and_line(tmp_path, line, message):
    append_verdicts(tmp_path, [Verdict("a", 0, "d1", "reject")])
    with open(verdicts_path(tmp_path), "ab") as f:
        f.write(line)
    with pytest.raises(VerdictError, match=message) as info:
        read_verdicts(tmp_path)
    assert str(verdicts_path(tmp_path)) in str(info.value) and "\n" not in str(info.value)


def _append_many(args):
    root, worker = args
    for k in range(40):
        append_verdicts(root, [Verdict(f"w{worker}-{k}", 0, "d" * 16, "reject", "x" * 300)])


def test_writers_in_several_processes_never_interleave_lines(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_append_many, [(tmp_path, w) for w in range(4)])
    verdicts = read_verdicts(tmp_path)
    assert sorted(v.sample_id for v in verdicts) == sorted(f"w{w}-{k}" for w in range(4) for k in range(40))


def test_generate_and_validate_refuse_a_damaged_verdict_file_and_change_nothing(demo_copy, capsys):
    reject(demo_copy, [rows(demo_copy, ["sample_id"])[0]["sample_id"]], "looks wrong")
    with open(verdicts_path(demo_copy), "ab") as f:
        f.write(b"garbage\n")
    before, verdicts = shard_bytes(demo_copy), verdicts_path(demo_copy).read_bytes()
    capsys.readouterr()
    assert invoke(["generate", "emotions", "--out", str(demo_copy), "-n", "24", "--model", "tiny",
                   "--rows-per-shard", "8", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: '") and "verdicts.jsonl' line 2: not JSON" in err and len(err.splitlines()) == 1
    assert invoke(["validate", str(demo_copy), "-q", "--no-images"]) == 1
    assert "verdicts.jsonl" in capsys.readouterr().out
    assert shard_bytes(demo_copy) == before and verdicts_path(demo_copy).read_bytes() == verdicts


def test_a_verdict_on_a_sample_the_dataset_lacks_is_one_line(demo_copy, capsys):
    append_verdicts(demo_copy, [Verdict("emotions-9999999", 0, "d1", "reject")])
    before = shard_bytes(demo_copy)
    assert invoke(["generate", "emotions", "--out", str(demo_copy), "-n", "24", "--model", "tiny",
                   "--rows-per-shard", "8", "-q"]) == 2
    err = capsys.readouterr().err
    assert "names sample 'emotions-9999999', which is not in this dataset" in err and len(err.splitlines()) == 1
    assert shard_bytes(demo_copy) == before


def test_current_rows_finds_the_rows_verdicts_name_by_image_digest(demo_dataset):
    import json as _json

    manifest = _json.loads((demo_dataset / "manifest.json").read_text())
    stored = rows(demo_dataset, ["sample_id", "attempt", "image"])
    wanted = [stored[3]["sample_id"], stored[17]["sample_id"]]
    found = current_rows(demo_dataset, list(manifest["shards"]), wanted)
    assert set(found) == set(wanted)
    for r in (stored[3], stored[17]):
        assert found[r["sample_id"]].image == image_digest(r["image"]["bytes"])
        assert found[r["sample_id"]].attempt == r["attempt"]
        assert (demo_dataset / found[r["sample_id"]].shard).is_file()


def _short_writes(monkeypatch, fail_after=1):
    """``os.write`` as a nearly full disk does it: a first call that writes half, then ENOSPC."""
    import errno
    import os

    from facesynth.review import verdicts as verdicts

    real, calls = os.write, {"n": 0}

    def write(fd, data):
        calls["n"] += 1
        if calls["n"] > fail_after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, bytes(data)[: max(1, len(data) // 2)])

    monkeypatch.setattr(verdicts.os, "write", write)
    return calls


def test_a_short_write_is_finished_and_a_full_disk_is_an_error_with_the_file_as_it_was(tmp_path, monkeypatch):
    append_verdicts(tmp_path, [Verdict("a", 0, "d1", "reject", "kept")])
    before = verdicts_path(tmp_path).read_bytes()
    _short_writes(monkeypatch, fail_after=1)  # half the line, then the disk is full
    with pytest.raises(VerdictError, match=r"verdicts.jsonl': cannot write \(No space left on device\); the verdict "
                                           r"was not saved"):
        append_verdicts(tmp_path, [Verdict("b", 0, "d2", "reject", "x" * 200)])
    assert verdicts_path(tmp_path).read_bytes() == before  # no torn tail: cut back to what it held
    monkeypatch.undo()
    calls = _short_writes(monkeypatch, fail_after=10)  # short writes that do make progress are finished
    saved = append_verdicts(tmp_path, [Verdict("c", 0, "d3", "reject", "y" * 200)])
    assert calls["n"] > 1 and [v.sample_id for v in saved] == ["c"]
    monkeypatch.undo()
    assert [v.sample_id for v in read_verdicts(tmp_path)] == ["a", "c"]


def test_a_whole_last_line_without_its_newline_is_kept_and_a_torn_one_is_cut(tmp_path):
    line = json.dumps({"sample_id": "a", "attempt": 0, "image": "d1", "verdict": "reject", "reason": "by hand"})
    verdicts_path(tmp_path).write_text(line)  # typed into an editor that adds no final newline
    assert [v.reason for v in read_verdicts(tmp_path)] == ["by hand"]
    append_verdicts(tmp_path, [Verdict("b", 0, "d2", "reject", "from the page")])
    assert verdicts_path(tmp_path).read_text().splitlines()[0] == line  # given its newline, not deleted
    assert [v.sample_id for v in read_verdicts(tmp_path)] == ["a", "b"]
    with open(verdicts_path(tmp_path), "ab") as f:
        f.write(line[:-3].encode())  # torn: not a whole verdict
    append_verdicts(tmp_path, [Verdict("c", 0, "d3", "restore")])
    assert [v.sample_id for v in read_verdicts(tmp_path)] == ["a", "b", "c"]


def test_a_snapshot_reads_only_the_verdicts_written_before_it(tmp_path):
    from facesynth.review.verdicts import snapshot_size

    append_verdicts(tmp_path, [Verdict("a", 0, "d1", "reject")])
    size = snapshot_size(tmp_path)
    with open(verdicts_path(tmp_path), "ab") as f:
        f.write(b'{"sample_id": "b", "att')  # a torn write is not in any snapshot
    assert snapshot_size(tmp_path) == size
    append_verdicts(tmp_path, [Verdict("c", 0, "d3", "reject")])
    assert [v.sample_id for v in read_verdicts(tmp_path, size)] == ["a"]
    assert [v.sample_id for v in read_verdicts(tmp_path)] == ["a", "c"]
