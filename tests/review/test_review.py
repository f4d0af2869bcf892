"""The review gallery's server: queries, images, verdicts, and bad input (no browser here; see
test_review_browser.py for the page itself)."""

import io
import json
import socket

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the review extra (starlette, uvicorn) is not installed")

from conftest import get, invoke, post, reject, rows, shard_bytes  # noqa: E402
from facesynth.errors import OutputError  # noqa: E402
from facesynth.recipe import load_recipe  # noqa: E402
from facesynth.review.gallery import THUMB, Gallery  # noqa: E402
from facesynth.review.server import ReviewServer  # noqa: E402
from facesynth.review.verdicts import image_digest, read_verdicts, verdicts_path  # noqa: E402

EMOTIONS = ["happy", "sad", "angry", "surprised"]


@pytest.fixture
def server(demo_copy):
    srv = ReviewServer(demo_copy, 0).start()
    yield srv
    srv.stop()


def by_shards(out):
    """Every row's labels and scores read straight from the shards, with its split."""
    manifest = json.loads((out / "manifest.json").read_text())
    out_rows = []
    for name, record in manifest["shards"].items():
        for r in pq.read_table(out / name, columns=["sample_id", "emotion", "gender", "clip_score",
                                                   "label_confidence"]).to_pylist():
            out_rows.append({**r, "emotion": EMOTIONS[r["emotion"]], "split": record["split"]})
    return out_rows


def test_filters_and_sorts_agree_with_the_shards(demo_dataset):
    gallery = Gallery(demo_dataset)
    stored = by_shards(demo_dataset)
    assert len(gallery) == len(stored) == 24
    for filters in ({}, {"emotion": "sad"}, {"emotion": "angry", "split": "train"}, {"gender": "female"}):
        genders = list(load_recipe("emotions").attributes["gender"].values)
        want = [r for r in stored if all(r[k] == v if k != "gender" else r[k] == genders.index(v)
                                         for k, v in filters.items())]
        got = [gallery.summary(i) for i in gallery.select(filters, "label_confidence", descending=True)]
        assert sorted(g["sample_id"] for g in got) == sorted(r["sample_id"] for r in want)
        # one section per primary label, in the recipe's order; best label_confidence first inside each
        assert [g["emotion"] for g in got] == sorted((g["emotion"] for g in got), key=EMOTIONS.index)
        for label in EMOTIONS:
            scores = [g["label_confidence"] for g in got if g["emotion"] == label]
            assert scores == sorted(scores, reverse=True)
    ascending = [gallery.summary(i)["clip_score"] for i in gallery.select({"emotion": "happy"}, "clip_score", False)]
    assert ascending == sorted(ascending)
    with pytest.raises(ValueError, match="emotion: unknown value 'bored'"):
        gallery.select({"emotion": "bored"})
    with pytest.raises(ValueError, match="sort: must be one of"):
        gallery.select({}, "seed")


def test_the_api_serves_rows_thumbnails_full_images_and_columns(server, demo_copy):
    status, kind, body = get(server.url + "api/rows?emotion=sad&sort=clip_score&order=desc&limit=4")
    data = json.loads(body)
    assert status == 200 and data["total"] == 6 and len(data["rows"]) == 4
    assert data["counts"] == {"happy": 0, "sad": 6, "angry": 0, "surprised": 0}
    scores = [r["clip_score"] for r in data["rows"]]
    assert scores == sorted(scores, reverse=True) and {r["emotion"] for r in data["rows"]} == {"sad"}
    first = data["rows"][0]
    stored = {r["sample_id"]: r for r in rows(demo_copy, ["sample_id", "image", "seed", "prompt"])}[first["sample_id"]]
    status, kind, png = get(server.url + f"image/{first['i']}")
    assert status == 200 and kind == "image/png" and png == stored["image"]["bytes"]  # the shard's own bytes
    status, kind, jpeg = get(server.url + f"thumb/{first['i']}")
    thumb = Image.open(io.BytesIO(jpeg))
    assert status == 200 and kind == "image/jpeg" and thumb.format == "JPEG" and max(thumb.size) <= THUMB
    status, _, body = get(server.url + f"api/row/{first['i']}")
    detail = json.loads(body)
    assert detail["columns"]["seed"] == stored["seed"] and detail["columns"]["prompt"] == stored["prompt"]
    assert detail["columns"]["emotion"] == "sad" and "image" not in detail["columns"]
    assert get(server.url + "api/row/999")[0] == 404
    assert get(server.url + "api/rows?emotion=bored")[0] == 400
    page = get(server.url)[2].decode()
    assert "facesynth review" in page and '"primary": "emotion"' in page


def test_a_rejection_is_saved_at_once_and_the_shards_never_change(server, demo_copy):
    before = shard_bytes(demo_copy)
    target = json.loads(get(server.url + "api/rows?emotion=happy&limit=3")[2])["rows"]
    status, data = post(server.url + "api/verdicts", {"verdict": "reject", "reason": "extra  fingers\n",
                                                      "rows": [{"sample_id": r["sample_id"], "attempt": r["attempt"]}
                                                               for r in target[:2]]})
    assert status == 200 and data["saved"] == 2 and data["rejected"] == 2
    saved = read_verdicts(demo_copy)  # on disk before the answer came back
    assert [(v.sample_id, v.verdict, v.reason) for v in saved] == [(r["sample_id"], "reject", "extra fingers")
                                                                   for r in target[:2]]
    images = {r["sample_id"]: r["image"]["bytes"] for r in rows(demo_copy, ["sample_id", "image"])}
    assert all(v.image == image_digest(images[v.sample_id]) for v in saved)
    listed = json.loads(get(server.url + "api/rows?status=rejected")[2])
    assert {r["sample_id"] for r in listed["rows"]} == {r["sample_id"] for r in target[:2]}
    assert all(r["reason"] == "extra fingers" for r in listed["rows"])
    status, data = post(server.url + "api/verdicts", {"verdict": "restore", "rows": [
        {"sample_id": target[0]["sample_id"], "attempt": target[0]["attempt"]}]})
    assert status == 200 and data["rejected"] == 1
    assert shard_bytes(demo_copy) == before
    # a new server on the folder shows the same state
    assert Gallery(demo_copy).rejected.sum() == 1


@pytest.mark.parametrize("body, content_type, status, message", [
    ({"rows": [{"sample_id": "emotions-9999999", "attempt": 0}]}, "application/json", 400, "not in this dataset"),
    ({"rows": "all"}, "application/json", 400, "rows: Input should be a valid list"),
    ({"rows": [{"sample_id": "emotions-0000000", "attempt": 0}], "verdict": "delete"}, "application/json", 400,
     "verdict: Input should be 'reject' or 'restore'"),
    (b"rows=1", "application/x-www-form-urlencoded", 415, "send JSON"),  # what another site's form could send
    ({"rows": [{"sample_id": "emotions-0000000", "attempt": 5}]}, "application/json", 409, "reload the page"),
])
def test_bad_verdict_requests_are_refused_and_nothing_is_written(server, demo_copy, body, content_type, status,
                                                                  message):
    code, data = post(server.url + "api/verdicts", body, content_type)
    assert code == status and message in data["error"]
    assert not verdicts_path(demo_copy).exists()


def test_requests_for_another_host_name_are_refused(server):
    assert get(server.url, host="attacker.example")[0] == 400  # DNS rebinding
    assert get(server.url.replace("127.0.0.1", "localhost"))[0] == 200


def test_the_page_sees_a_folder_changed_by_generate(server, demo_copy):
    target = json.loads(get(server.url + "api/rows?limit=1")[2])["rows"][0]
    reject(demo_copy, [target["sample_id"]], "changed elsewhere")  # another process, e.g. a second reviewer
    manifest = demo_copy / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")  # generate rewrote the manifest
    status, data = post(server.url + "api/verdicts", {"rows": [{"sample_id": target["sample_id"],
                                                                "attempt": target["attempt"]}]})
    assert status == 409 and "reload the page" in data["error"]
    listed = json.loads(get(server.url + "api/rows?status=rejected")[2])
    assert [r["sample_id"] for r in listed["rows"]] == [target["sample_id"]]


def test_a_port_in_use_and_a_folder_that_is_not_a_dataset_are_one_line(demo_dataset, tmp_path, capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(OutputError, match=f"--port: 127.0.0.1:{port} is in use"):
            ReviewServer(demo_dataset, port)
        assert invoke(["review", str(demo_dataset), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "is in use" in err
    finally:
        taken.close()
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "me.jpg").write_bytes(b"x")
    assert invoke(["review", str(tmp_path / "photos")]) == 2
    err = capsys.readouterr().err
    assert "no manifest.json" in err and len(err.strip().splitlines()) == 1
    assert invoke(["review", str(tmp_path / "missing")]) == 2
    assert (tmp_path / "photos" / "me.jpg").read_bytes() == b"x" and not (tmp_path / "missing").exists()


def test_nan_scores_sort_last_and_serialize_as_null(demo_copy):
    gallery = Gallery(demo_copy)
    gallery.scores["clip_score"][:] = np.nan
    gallery.scores["clip_score"][5] = 0.5
    order = gallery.select({}, "clip_score")
    first_of_label = gallery.summary(order[0])
    assert gallery.summary(5)["clip_score"] == 0.5
    assert all(gallery.summary(i)["clip_score"] is None for i in order if i != 5)
    assert first_of_label["emotion"] == "happy"
    happy = [i for i in order if gallery.summary(i)["emotion"] == gallery.summary(5)["emotion"]]
    assert happy[0] == 5  # the one real score comes before the missing ones of its section
    json.dumps([gallery.summary(i) for i in order], allow_nan=False)


def test_the_command_prints_its_url_serves_and_stops_cleanly_on_ctrl_c(demo_dataset):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "facesynth", "review", str(demo_dataset), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"Reviewing {demo_dataset} (24 rows, 0 rejected) at http://127.0.0.1:")
        url = line.split(" at ")[1].split()[0]
        assert get(url + "api/rows?limit=1")[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "run the same generate command" in out and "Traceback" not in err


def test_a_damaged_verdict_file_stops_the_gallery_with_one_line(demo_copy, capsys):
    (demo_copy / "verdicts.jsonl").write_text('{"sample_id": "emotions-0000000"}\n')
    assert invoke(["review", str(demo_copy), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "verdicts.jsonl' line 1: 'attempt' must be" in err and len(err.strip().splitlines()) == 1
    assert (demo_copy / "verdicts.jsonl").read_text() == '{"sample_id": "emotions-0000000"}\n'


def test_verdicts_saved_before_the_server_is_killed_are_all_there(demo_copy):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "facesynth", "review", str(demo_copy), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split(" at ")[1].split()[0]
        listed = json.loads(get(url + "api/rows?emotion=angry")[2])["rows"]
        for r in listed[:3]:
            status, _ = post(url + "api/verdicts", {"reason": "bad hands", "rows": [
                {"sample_id": r["sample_id"], "attempt": r["attempt"]}]})
            assert status == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    gallery = Gallery(demo_copy)  # a new server sees every verdict that was answered as saved
    assert sorted(gallery.sample_ids[i] for i in np.flatnonzero(gallery.rejected)) == sorted(
        r["sample_id"] for r in listed[:3])


# --- hostile requests: every failure is a JSON error the page shows, never a 500 -------------------------------

def first_row(server):
    code, _, body = get(server.url + "api/rows?limit=1")
    row = json.loads(body)["rows"][0]
    return {"sample_id": row["sample_id"], "attempt": row["attempt"]}


@pytest.mark.parametrize("body, status, message", [
    (b'{"rows": [{"sample_id": {"a": 1}, "attempt": 0}]}', 400, "rows.0.sample_id: Input should be a valid string"),
    (b'{"rows": [{"sample_id": "x", "attempt": true}]}', 400, "rows.0.attempt: Input should be a valid integer"),
    (b'{"rows": [{"sample_id": "x", "attempt": -1}]}', 400, "rows.0.attempt: Input should be greater than or equal"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    (b'{"rows": [], "verdict": "reject"}', 400, "rows: List should have at least 1 item"),
    (b'{"rows": [{"sample_id": "x", "attempt": 0}], "delete": true}', 400, "delete: Extra inputs are not permitted"),
    (b'{"rows": [{"sample_id": "x", "attempt": 0}], "reason": 5}', 400, "reason: Input should be a valid string"),
    (b"\xff\xfe", 400, "not JSON"),
    (b"NaN", 400, "body: Input should be a valid dictionary"),
])
def test_malformed_verdict_bodies_are_400_and_write_nothing(server, demo_copy, body, status, message):
    code, data = post(server.url + "api/verdicts", body)
    assert (code, message in data["error"]) == (status, True), data
    assert not verdicts_path(demo_copy).exists()


def test_bodies_and_row_counts_are_bounded(server, demo_copy):
    from facesynth.review.gallery import MAX_ROWS
    from facesynth.review.server import MAX_BODY

    import http.client

    row = first_row(server)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)  # no Content-Length: read and counted
    conn.putrequest("POST", "/api/verdicts")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for _ in range(MAX_BODY // 65536 + 2):
            conn.send(b"10000\r\n" + b" " * 65536 + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server stopped reading once it had too much
    response = conn.getresponse()
    assert response.status == 413 and "larger than" in json.loads(response.read())["error"]
    conn.close()
    many = json.dumps({"rows": [row] * (MAX_ROWS + 1)}).encode()
    code, data = post(server.url + "api/verdicts", many)
    assert code == 400 and f"at most {MAX_ROWS} items" in data["error"]
    assert not verdicts_path(demo_copy).exists()
    code, data = post(server.url + "api/verdicts", json.dumps({"rows": [row] * 5000}).encode())
    assert code == 200 and data["saved"] == 1  # one row named 5,000 times is judged once
    assert len(read_verdicts(demo_copy)) == 1


def test_a_100_mb_body_is_refused_without_being_read(server):
    """A client that says it sends 100 MB is refused at once, from its Content-Length."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/api/verdicts")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(100 * 1024 * 1024))
    conn.endheaders()
    conn.send(b"{" * 65536)
    response = conn.getresponse()
    assert response.status == 413 and "larger than" in json.loads(response.read())["error"]
    conn.close()


@pytest.mark.parametrize("query, message", [
    ("offset=-5", "offset: must be between 0"), ("offset=x", "offset: must be a whole number"),
    ("limit=0", "limit: must be between 1"), ("limit=99999", "limit: must be between 1 and 2000"),
    ("order=sideways", "order: must be asc or desc"), ("emotion=bored", "emotion: unknown value 'bored'"),
    ("colour=red", "unknown filter 'colour'"),
])
def test_bad_queries_are_400(server, query, message):
    code, kind, body = get(server.url + "api/rows?" + query)
    assert code == 400 and kind == "application/json" and message in json.loads(body)["error"]


@pytest.mark.parametrize("path", ["api/row/-1", "api/row/99999", "api/row/x", "thumb/99999", "image/1e3"])
def test_rows_that_do_not_exist_are_404_json(server, path):
    code, kind, body = get(server.url + path)
    assert code == 404 and kind == "application/json" and "no such row" in json.loads(body)["error"]


def test_verdict_bodies_never_get_a_500(server, demo_copy):
    """Property: whatever JSON the page (or anyone on this machine) posts, the answer is JSON with a 2xx or 4xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    row = first_row(server)
    scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                                inner, max_size=3),
                          max_leaves=8)
    bodies = st.fixed_dictionaries({}, optional={"rows": st.lists(st.fixed_dictionaries(
        {}, optional={"sample_id": st.sampled_from([row["sample_id"], "nope"]) | values,
                      "attempt": st.sampled_from([row["attempt"], 7]) | values}), max_size=3) | values,
        "verdict": st.sampled_from(["reject", "restore", "x"]) | values, "reason": values}) | values

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def check(body):
        code, data = post(server.url + "api/verdicts", json.dumps(body).encode())
        assert code in (200, 400, 409), (code, body, data)
        assert ("saved" in data) if code == 200 else isinstance(data["error"], str)

    check()
    read_verdicts(demo_copy)  # whatever was saved is a readable file


def test_a_full_disk_never_acknowledges_a_verdict_that_is_not_on_disk(demo_dataset, tmp_path):
    """A real, nearly full tmpfs: every verdict answered "saved" is on disk, the others are JSON errors, and the
    file never gets a torn tail."""
    import shutil

    from conftest import fill_disk, tmpfs

    with tmpfs(tmp_path / "disk", size="3m") as disk:
        folder = disk / "demo"
        shutil.copytree(demo_dataset, folder)
        fill_disk(disk, leave=6000)  # one page: some verdicts fit, then the disk is full
        srv = ReviewServer(folder, 0).start()
        try:
            _, _, body = get(srv.url + "api/rows?limit=24")
            targets = json.loads(body)["rows"]
            answers = []
            for n in range(40):
                row = targets[n % len(targets)]
                answers.append(post(srv.url + "api/verdicts", json.dumps({
                    "rows": [{"sample_id": row["sample_id"], "attempt": row["attempt"]}],
                    "verdict": "reject", "reason": f"reason {n} " + "x" * 150}).encode()))
        finally:
            srv.stop()
        saved = [n for n, (code, _) in enumerate(answers) if code == 200]
        refused = [(code, data["error"]) for code, data in answers if code != 200]
        assert saved and refused, answers  # the disk filled up part of the way through
        assert all(code == 503 and "No space left on device" in error for code, error in refused)
        raw = verdicts_path(folder).read_bytes()
        assert raw.endswith(b"\n")  # no torn tail
        on_disk = [v.reason.split()[1] for v in read_verdicts(folder)]
        assert on_disk == [str(n) for n in saved]  # exactly the acknowledged ones, in order


def test_a_read_only_folder_answers_a_json_error_the_page_shows(demo_dataset, tmp_path):
    import shutil

    from conftest import remount, tmpfs

    with tmpfs(tmp_path / "disk", size="8m") as disk:
        folder = disk / "demo"
        shutil.copytree(demo_dataset, folder)
        remount(disk, "ro")
        srv = ReviewServer(folder, 0).start()
        try:
            code, data = post(srv.url + "api/verdicts", {"rows": [first_row(srv)], "reason": "blurry"})
            page_code, _, _ = get(srv.url)
        finally:
            srv.stop()
            remount(disk, "rw")
        assert code == 503 and "Read-only file system" in data["error"] and "not saved" in data["error"]
        assert page_code == 200 and not verdicts_path(folder).exists()


@pytest.mark.slow
def test_requests_during_reloads_see_one_consistent_snapshot(demo_copy):
    """400 row requests from 8 threads while the folder changes under the server (a manifest rewritten as
    ``generate`` does): every answer is 200 (or 404 JSON for an index past the end), none fails."""
    import threading

    from facesynth.folder.writer import Manifest

    srv = ReviewServer(demo_copy, 0).start()
    answers, stop = [], threading.Event()

    def client(k):
        for n in range(50):
            code, kind, _ = get(srv.url + f"api/row/{(k * 50 + n) % 24}")
            answers.append((code, kind))

    def writer():
        while not stop.is_set():
            manifest = Manifest.load(demo_copy)
            manifest.save(demo_copy)  # a new stamp: the next request reloads

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    changer = threading.Thread(target=writer)
    changer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    changer.join()
    srv.stop()
    assert len(answers) == 400 and {code for code, _ in answers} == {200}
    assert {kind for _, kind in answers} == {"application/json"}


def test_the_gallery_refuses_a_folder_being_written_and_keeps_its_rows_during_a_run(demo_copy):
    import os

    from facesynth.errors import OutputError
    from facesynth.folder.lock import FolderLock
    from facesynth.review.gallery import Gallery
    from facesynth.folder.writer import Manifest

    with FolderLock(demo_copy):
        with pytest.raises(OutputError, match=rf"a facesynth process \(pid {os.getpid()}\) is writing it; review it"):
            Gallery(demo_copy)
    gallery = Gallery(demo_copy)
    manifest = Manifest.load(demo_copy)
    manifest.data["complete"] = False  # a grow started: its manifest has fewer shards so far
    kept = dict(manifest.shards)
    manifest.data["shards"] = {}
    with FolderLock(demo_copy):
        manifest.save(demo_copy)
        assert not gallery.refresh() and len(gallery) == 24
    assert not gallery.refresh() and len(gallery) == 24  # the run stopped half-way: still the old rows
    manifest.data.update(complete=True, shards=kept)
    manifest.save(demo_copy)
    assert gallery.refresh() and len(gallery) == 24


def test_overwrite_of_a_reviewed_folder_sets_the_review_log_aside(demo_copy, capsys):
    """At the same size or smaller, with other parameters: the run goes ahead, the old verdicts (which judged
    rows that no longer exist) go to .facesynth/replaced/, and push would not publish them."""
    reject(demo_copy, ["emotions-0000001"], "blurry")
    for n in ("24", "8"):
        capsys.readouterr()
        assert invoke(["generate", "emotions", "--model", "tiny", "-n", n, "--out", str(demo_copy), "-q",
                       "--rows-per-shard", "8", "--seed", n, "--overwrite"]) == 0, capsys.readouterr().err
        assert not (demo_copy / "verdicts.jsonl").exists()
    aside = list((demo_copy / ".facesynth" / "replaced").glob("verdicts-*.jsonl"))
    assert len(aside) == 1 and "blurry" in aside[0].read_text()
    assert invoke(["push", str(demo_copy), "--repo-id", "me/x", "--dry-run"]) == 0
    assert "verdicts.jsonl" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_dataset_in_a_store_is_reviewed_read_only(demo_dataset, s3, tmp_path):
    """``facesynth review s3://...`` as a user runs it: the gallery serves the stored rows, every verdict is a
    JSON 403 that says why, nothing is written to the store, and Ctrl-C removes the staging folder."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import put_in_store, store_files

    url = f"{s3}/faces/demo"
    put_in_store(demo_dataset, url)
    before = store_files(url)
    proc = subprocess.Popen([sys.executable, "-m", "facesynth.cli", "review", url, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"Reviewing {url} (24 rows, 0 rejected, read-only) at http://127.0.0.1:"), \
            line + proc.stderr.read()
        base = line.split(" at ", 1)[1].split()[0]
        status, _, body = get(base + "api/rows?limit=24")
        listed = json.loads(body)["rows"]
        assert status == 200 and len(listed) == 24
        status, kind, _ = get(base + f"thumb/{listed[0]['i']}")  # pictures from the staged shards
        assert status == 200 and kind == "image/jpeg"
        status, answer = post(base + "api/verdicts", {"rows": [{"sample_id": listed[0]["sample_id"],
                                                                "attempt": listed[0]["attempt"]}],
                                                      "verdict": "reject", "reason": ""})
        assert status == 403 and answer["error"].startswith(f"read-only: '{url}' is in object storage")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert store_files(url) == before  # nothing written to the store
    assert not list((tmp_path / "stages").rglob("*.parquet"))  # the staging folder is gone
