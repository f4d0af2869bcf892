"""``facesynth review``: a local gallery to look at a dataset and reject rows before it is published.

A small ASGI app (Starlette, served by uvicorn; the ``review`` extra). The rows'
columns, without images, are held in memory as NumPy arrays, so filtering and
sorting 30,000 rows takes milliseconds; images are read from the shards only when
the browser asks for them (thumbnails lazily, as they scroll into view), and nothing
is copied to disk. Verdicts go to ``verdicts.jsonl`` (see :mod:`facesynth.verdicts`);
the shards are never written here.

The server listens on 127.0.0.1 only and answers only requests addressed to it by
that name (no DNS rebinding); verdicts are accepted only as JSON, which another
site's page cannot send without a CORS preflight that is never granted.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from .builder import read_manifest, shard_paths
from .errors import FacesynthError, OutputError, shorten, visible
from .recipe import parse_recipe
from .schema import verified_attributes, verified_columns
from .verdicts import Verdict, VerdictError, append_verdicts, clean_reason, image_digest, review_state

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 7860
SORTS = ("clip_score", "label_confidence", "safety_score")  # and each verified attribute's probability
VERIFIER_FILTERS = ("disagrees", "agrees")  # a verifier's verdict is not / is the row's value (every one)
THUMB = 192  # thumbnail side, px
PAGE = 240  # rows per request
MAX_PAGE = 2000
MAX_ROWS = 10_000  # rows one verdict request may name
MAX_BODY = 2 * 1024 * 1024  # bytes of one verdict request
_META = ["sample_id", "prompt", "seed", "attempt", *SORTS]


def require_server():
    """Starlette and uvicorn, or one line saying how to get them."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise FacesynthError("facesynth review needs the review extra: pip install 'facesynth[review]'") from None


@dataclass(frozen=True)
class Where:
    """A row's place: shard, row group, index in the group."""

    shard: str
    group: int
    offset: int


class Rows:
    """One reading of the folder: every row's labels and scores as arrays, and where each row is.

    A reload builds a new one and swaps it in whole, so a request that took one sees it consistent to
    the end (no index rebuilt under its feet); only ``rejected`` and ``reasons`` change in place, under
    the gallery's write lock, as verdicts are saved.
    """

    def __init__(self, root: Path, manifest, attributes: dict[str, list[str]], splits: list[str],
                 verified: list[str] = ()):
        self.root = root
        self.manifest = manifest
        paths = shard_paths(root, manifest)
        checked = [c for a in verified for c in verified_columns(a)]
        meta = [*_META, *checked]
        columns: dict[str, list] = {c: [] for c in [*meta, *attributes, "split"]}
        self.where: list[Where] = []
        for name, path in paths.items():
            parquet = pq.ParquetFile(path)
            present = [c for c in [*meta, *attributes] if c in parquet.schema_arrow.names]
            split = manifest.shards[name]["split"]
            for g in range(parquet.num_row_groups):
                table = parquet.read_row_group(g, columns=present)
                for c in columns:
                    if c == "split":
                        columns[c] += [split] * table.num_rows
                    elif c in present:
                        columns[c] += table[c].to_pylist()
                    else:  # a column an older format lacks
                        columns[c] += [None] * table.num_rows
                self.where += [Where(name, g, i) for i in range(table.num_rows)]
        self.shards = len(paths)
        self.sample_ids: list[str] = columns["sample_id"]
        self.index = {sid: i for i, sid in enumerate(self.sample_ids)}
        self.prompts: list[str] = columns["prompt"]
        self.seeds: list[int] = columns["seed"]
        self.attempts = np.array(columns["attempt"], dtype=np.int64)
        self.labels = {a: np.array(columns[a], dtype=np.int16) for a in attributes}
        split_ids = {s: i for i, s in enumerate(splits)}
        self.split = np.array([split_ids.get(s, -1) for s in columns["split"]], dtype=np.int16)
        self.scores = {k: np.array([np.nan if v is None else v for v in columns[k]], dtype=np.float64)
                       for k in [*SORTS, *(verified_columns(a)[1] for a in verified)]}
        # each verified attribute's verdict (an index into its values, then "other"; -1 where none is recorded)
        self.verdicts = {a: np.array([-1 if v is None else v for v in columns[verified_columns(a)[0]]], dtype=np.int16)
                         for a in verified}
        self.rejected = np.zeros(len(self.sample_ids), dtype=bool)
        self.reasons: dict[int, str] = {}
        self.images: OrderedDict[tuple[str, int], list[bytes]] = OrderedDict()  # row groups' PNGs, LRU
        waiting, _ = review_state(root, list(manifest.shards), self.index)
        for sid, verdict in waiting.items():
            self.mark(self.index[sid], verdict)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def mark(self, i: int, verdict: Verdict) -> None:
        self.rejected[i] = verdict.verdict == "reject"
        if self.rejected[i]:
            self.reasons[i] = verdict.reason
        else:
            self.reasons.pop(i, None)


class Gallery:
    """A dataset folder's rows, for the review page: columns in memory, images read on demand.

    Attribute reads (``sample_ids``, ``rejected``, ``scores``, ...) go to the current :class:`Rows`.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise OutputError(f"'{self.root}': not a folder")
        from .builder import check_complete, wait_for_writer

        wait_for_writer(self.root, False, "review it")  # a grow in progress would show only what it kept so far
        manifest = read_manifest(self.root)
        check_complete(self.root, manifest, partial=False)
        self.recipe = parse_recipe(manifest["recipe"]["yaml"], manifest["recipe"]["source"])
        self.attributes = {a: list(attr.values) for a, attr in self.recipe.attributes.items()}
        self.primary = self.recipe.primary
        self.splits = list(self.recipe.splits)
        self.verified = verified_attributes(manifest)
        self.sorts = [*SORTS, *(verified_columns(a)[1] for a in self.verified)]
        self._write = threading.Lock()  # reloads and verdicts take turns; readers never wait
        self._cache = threading.Lock()
        self.stamp = self._stamp()
        self.snapshot = self._read()

    def __getattr__(self, name: str):
        if name == "snapshot":
            raise AttributeError(name)
        return getattr(self.snapshot, name)

    # Loading ------------------------------------------------------------------------------
    def _stamp(self) -> tuple[int, int, int]:
        stat = (self.root / "manifest.json").stat()
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _read(self) -> Rows:
        """Read every shard's label and score columns (no images) into a new :class:`Rows`."""
        rows = Rows(self.root, read_manifest(self.root), self.attributes, self.splits, self.verified)
        logger.info("review: %d rows in %d shards, %d rejected", len(rows), rows.shards, int(rows.rejected.sum()))
        return rows

    def refresh(self) -> bool:
        """Reload if ``generate`` changed the folder since and has finished; returns whether it did. While a run
        writes the folder (a grow, a review round) the gallery keeps showing the rows it had."""
        from .lock import folder_held

        if self._stamp() == self.stamp or folder_held(self.root):
            return False
        with self._write:
            stamp = self._stamp()
            if stamp == self.stamp or not read_manifest(self.root).get("complete"):
                return False
            self.snapshot, self.stamp = self._read(), stamp
        return True

    def __len__(self) -> int:
        return len(self.snapshot)

    # Queries ------------------------------------------------------------------------------
    def select(self, filters: dict[str, str], sort: str = "clip_score", descending: bool = True,
               status: str = "all", rows: Rows | None = None) -> np.ndarray:
        """Row indices that pass the filters, grouped by primary label (in recipe order), sorted within."""
        rows = rows or self.snapshot
        mask = np.ones(len(rows), dtype=bool)
        for attr, value in filters.items():
            if attr == "split":
                if value not in self.splits:
                    raise ValueError(f"split: unknown value '{shorten(value, 60)}'")
                mask &= rows.split == self.splits.index(value)
            elif attr == "verifier":
                if value not in VERIFIER_FILTERS or not self.verified:
                    raise ValueError(f"verifier: must be {' or '.join(VERIFIER_FILTERS)}, for a verified dataset "
                                     f"(got '{shorten(value, 60)}')")
                disputed = np.zeros(len(rows), dtype=bool)
                for a in self.verified:
                    disputed |= rows.verdicts[a] != rows.labels[a]
                mask &= disputed if value == "disagrees" else ~disputed
            elif attr in self.attributes:
                if value not in self.attributes[attr]:
                    raise ValueError(f"{attr}: unknown value '{shorten(value, 60)}'")
                mask &= rows.labels[attr] == self.attributes[attr].index(value)
            else:
                raise ValueError(f"unknown filter '{shorten(attr, 60)}'")
        if status == "rejected":
            mask &= rows.rejected
        elif status == "kept":
            mask &= ~rows.rejected
        elif status != "all":
            raise ValueError(f"status: must be all, kept or rejected (got '{shorten(status, 60)}')")
        if sort not in self.sorts:
            raise ValueError(f"sort: must be one of {', '.join(self.sorts)} (got '{shorten(sort, 60)}')")
        found = np.flatnonzero(mask)
        key = rows.scores[sort][found]
        key = np.where(np.isnan(key), np.inf, -key if descending else key)  # missing scores last
        order = np.lexsort((found, key, rows.labels[self.primary][found]))
        return found[order]

    def summary(self, i: int, rows: Rows | None = None) -> dict[str, Any]:
        """What a gallery tile shows."""
        rows = rows or self.snapshot
        return {
            "i": int(i), "sample_id": rows.sample_ids[i], "attempt": int(rows.attempts[i]),
            **{a: self.attributes[a][rows.labels[a][i]] for a in self.attributes},
            "split": self.splits[rows.split[i]] if rows.split[i] >= 0 else None,
            **{k: _finite(rows.scores[k][i]) for k in self.sorts},
            **{verified_columns(a)[0]: ([*self.attributes[a], "other"][rows.verdicts[a][i]]
                                        if rows.verdicts[a][i] >= 0 else None) for a in self.verified},
            "rejected": bool(rows.rejected[i]), "reason": rows.reasons.get(int(i), ""),
        }

    def row(self, i: int, rows: Rows | None = None) -> dict[str, Any]:
        """A row's columns (no image, no embedding), for the detail view."""
        rows = rows or self.snapshot
        where = rows.where[i]
        table = pq.ParquetFile(self.root / where.shard).read_row_group(where.group)
        row = {k: v for k, v in table.slice(where.offset, 1).to_pylist()[0].items()
               if k not in ("image", "clip_embedding")}
        for attr, values in self.attributes.items():
            row[attr] = values[row[attr]]
        for key, value in row.items():
            if isinstance(value, float):
                row[key] = _finite(value)
            elif isinstance(value, list):
                row[key] = [_finite(v) if isinstance(v, float) else v for v in value]
            elif isinstance(value, str):
                row[key] = visible(value)  # a prompt's bidi or control characters are shown, never obeyed
        return {**self.summary(i, rows), "columns": row, "shard": where.shard}

    # Images -------------------------------------------------------------------------------
    def _group_images(self, rows: Rows, where: Where) -> list[bytes]:
        """The PNG bytes of one row group, from a small LRU cache (a page of thumbnails reads each group once)."""
        key = (where.shard, where.group)
        with self._cache:
            if key in rows.images:
                rows.images.move_to_end(key)
                return rows.images[key]
        table = pq.ParquetFile(self.root / where.shard).read_row_group(where.group, columns=["image"])
        images = [cell["bytes"] for cell in table["image"].to_pylist()]
        with self._cache:
            rows.images[key] = images
            while len(rows.images) > 8:
                rows.images.popitem(last=False)
        return images

    def image(self, i: int, rows: Rows | None = None) -> bytes:
        rows = rows or self.snapshot
        where = rows.where[i]
        return self._group_images(rows, where)[where.offset]

    def thumbnail(self, i: int, rows: Rows | None = None) -> bytes:
        image = Image.open(io.BytesIO(self.image(i, rows))).convert("RGB")
        image.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)  # never upscales
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    # Verdicts -----------------------------------------------------------------------------
    def judge(self, items: list[dict[str, Any]], verdict: str, reason: Any = "") -> list[dict[str, Any]]:
        """Save a verdict on rows named by ``{"sample_id", "attempt"}``; the rows as they are now.

        Each row is judged once however often the request names it; nothing is saved unless every row is valid.
        """
        if verdict not in ("reject", "restore"):
            raise ValueError("verdict: must be reject or restore")
        reason = clean_reason(reason) if verdict == "reject" else ""
        with self._write:
            rows = self.snapshot
            entries, chosen, seen = [], [], set()
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("sample_id"), str):
                    raise ValueError("each row must be an object with sample_id (text) and attempt")
                i = rows.index.get(item["sample_id"])
                if i is None:
                    raise ValueError(f"sample_id: '{shorten(item['sample_id'], 60)}' is not in this dataset")
                if item.get("attempt") != int(rows.attempts[i]):
                    raise LookupError(f"{rows.sample_ids[i]}: the dataset now holds attempt {int(rows.attempts[i])}; "
                                      "reload the page")
                if i in seen:
                    continue
                seen.add(i)
                entries.append(Verdict(rows.sample_ids[i], int(rows.attempts[i]), image_digest(self.image(i, rows)),
                                       verdict, reason))
                chosen.append(i)
            saved = append_verdicts(self.root, entries)
            for i, entry in zip(chosen, saved):
                rows.mark(i, entry)
            return [self.summary(i, rows) for i in chosen]

    def config(self) -> dict[str, Any]:
        """What the page needs to draw its filters."""
        return {"name": self.recipe.name, "root": visible(self.root.name), "primary": self.primary,
                "attributes": self.attributes, "splits": self.splits, "sorts": self.sorts, "rows": len(self),
                "verified": self.verified,
                "version": self.snapshot.manifest.get("version"), "page": PAGE, "max_rows": MAX_ROWS}


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


class BadRequest(Exception):
    """A request the server refuses: answered with its status and a JSON ``{"error": ...}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.pop(name, None)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(400, f"{name}: must be a whole number (got '{shorten(raw, 40)}')") from None
    if not low <= value <= high:
        raise BadRequest(400, f"{name}: must be between {low} and {high} (got {value})")
    return value


def parse_verdict_body(raw: bytes) -> dict[str, Any]:
    """A verdict request's body, checked against its schema, or :class:`BadRequest` saying what is wrong."""
    from pydantic import ValidationError

    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadRequest(400, "the body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"the body is not JSON ({shorten(str(exc), 80)})") from None
    try:
        return _VerdictBody.model_validate(data).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise BadRequest(400, f"{where}: {shorten(err['msg'], 120)}") from None
    except RecursionError:
        raise BadRequest(400, "the body is nested too deeply") from None


def _schemas():
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field

    strict = ConfigDict(extra="forbid", strict=True)

    class RowRef(BaseModel):
        model_config = strict
        sample_id: str = Field(min_length=1, max_length=500)
        attempt: int = Field(ge=0)

    class VerdictBody(BaseModel):
        """``{"rows": [{"sample_id", "attempt"}, ...], "verdict": "reject" | "restore", "reason": text}``."""

        model_config = strict
        rows: list[RowRef] = Field(min_length=1, max_length=MAX_ROWS)
        verdict: Literal["reject", "restore"] = "reject"
        reason: str | None = Field(None, max_length=100_000)

    return VerdictBody


_VerdictBody = _schemas()


async def _read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (read in chunks, never whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadRequest(413, f"the body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(gallery: Gallery):
    """The Starlette app for one gallery. Handlers that read shards are plain functions, which Starlette runs
    in its thread pool, so thumbnails decode in parallel and never hold up the event loop.

    Every answer that is not a page or an image is JSON; every failure is a JSON ``{"error": ...}`` the page
    shows: 400 for a malformed request, 404 for no such row, 409 when the folder changed, 413 for a body
    over ``MAX_BODY``, 415 for a body that is not JSON, 503 when the verdict cannot be written.
    """
    import jinja2
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.routing import Route

    template = jinja2.Environment(autoescape=True).from_string(
        (resources.files("facesynth") / "templates" / "review.html").read_text(encoding="utf-8"))

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def row_index(request: Request, rows: Rows) -> int:
        raw = request.path_params["i"]
        if not raw.isdigit() or int(raw) >= len(rows):
            raise BadRequest(404, "no such row (reload the page)")
        return int(raw)

    def page(request: Request) -> Response:
        gallery.refresh()
        config = json.dumps(gallery.config()).replace("<", "\\u003c")  # no "</script>" from a recipe's names
        return HTMLResponse(template.render(config=config, title=gallery.recipe.name))

    def rows(request: Request) -> Response:
        gallery.refresh()
        snap = gallery.snapshot
        q = dict(request.query_params)
        offset = _int_param(q, "offset", 0, 0, 10**9)
        limit = _int_param(q, "limit", PAGE, 1, MAX_PAGE)
        sort, order, status = q.pop("sort", "clip_score"), q.pop("order", "desc"), q.pop("status", "all")
        if order not in ("asc", "desc"):
            raise BadRequest(400, f"order: must be asc or desc (got '{shorten(order, 40)}')")
        try:
            selected = gallery.select({k: v for k, v in q.items() if v}, sort, order != "asc", status, snap)
        except ValueError as exc:
            raise BadRequest(400, str(exc)) from None
        primary = snap.labels[gallery.primary][selected]
        counts = {v: int((primary == k).sum()) for k, v in enumerate(gallery.attributes[gallery.primary])}
        return JSONResponse({"total": int(len(selected)), "offset": offset, "counts": counts,
                             "rejected": int(snap.rejected.sum()),
                             "rows": [gallery.summary(i, snap) for i in selected[offset:offset + limit]]})

    def row(request: Request) -> Response:
        gallery.refresh()
        snap = gallery.snapshot
        return JSONResponse(gallery.row(row_index(request, snap), snap))

    def image_response(data: bytes, media: str) -> Response:
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    def thumb(request: Request) -> Response:
        gallery.refresh()
        snap = gallery.snapshot
        return image_response(gallery.thumbnail(row_index(request, snap), snap), "image/jpeg")

    def image(request: Request) -> Response:
        gallery.refresh()
        snap = gallery.snapshot
        return image_response(gallery.image(row_index(request, snap), snap), "image/png")

    async def verdicts(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise BadRequest(415, "send JSON")
        body = parse_verdict_body(await _read_body(request, MAX_BODY))
        if await run_in_threadpool(gallery.refresh):
            raise BadRequest(409, "the dataset changed since the page was loaded (generate ran); reload the page")
        try:
            saved = await run_in_threadpool(gallery.judge, body["rows"], body["verdict"], body["reason"])
        except LookupError as exc:
            raise BadRequest(409, str(exc)) from None
        except ValueError as exc:
            raise BadRequest(400, str(exc)) from None
        return JSONResponse({"saved": len(saved), "rows": saved, "rejected": int(gallery.snapshot.rejected.sum())})

    async def refused(request: Request, exc: BadRequest) -> Response:
        return error(exc.status, str(exc))

    async def unavailable(request: Request, exc: FacesynthError) -> Response:
        # the verdict file cannot be written or read (a full disk, a read-only folder, a damaged file)
        return error(503, str(exc))

    async def failed(request: Request, exc: Exception) -> Response:
        logger.exception("review: %s %s failed", request.method, request.url.path)
        return error(500, f"the server failed ({type(exc).__name__}: {shorten(str(exc), 120)}); see its log")

    routes = [Route("/", page), Route("/api/rows", rows), Route("/api/row/{i}", row), Route("/thumb/{i}", thumb),
              Route("/image/{i}", image), Route("/api/verdicts", verdicts, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware,
                                                           allowed_hosts=[HOST, "localhost"])],
                     exception_handlers={BadRequest: refused, FacesynthError: unavailable, OSError: unavailable,
                                         Exception: failed})


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1, or one line saying the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OutputError(f"--port: {HOST}:{port} is in use; give another --port (0 picks a free one)") from None
        raise OutputError(f"--port: cannot listen on {HOST}:{port} ({exc.strerror or exc})") from None
    sock.listen(128)
    return sock


class ReviewServer:
    """The gallery served on 127.0.0.1; ``run()`` blocks, ``start()`` runs it on a thread (tests)."""

    def __init__(self, root: str | Path, port: int = DEFAULT_PORT):
        require_server()
        import uvicorn

        self.gallery = Gallery(root)
        self.socket = bind(port)
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(create_app(self.gallery), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self) -> "ReviewServer":
        self._thread = threading.Thread(target=self.run, name="facesynth-review", daemon=True)
        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            self._thread.join(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
