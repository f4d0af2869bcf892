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
from .errors import FacesynthError, OutputError
from .recipe import parse_recipe
from .verdicts import Verdict, VerdictError, append_verdicts, clean_reason, image_digest, review_state

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 7860
SORTS = ("clip_score", "label_confidence", "safety_score")
THUMB = 192  # thumbnail side, px
PAGE = 240  # rows per request
MAX_PAGE = 2000
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


class Gallery:
    """A dataset folder's rows, for the review page: columns in memory, images read on demand."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise OutputError(f"'{self.root}': not a folder")
        self.manifest = read_manifest(self.root)  # checked again by every reload
        self.recipe = parse_recipe(self.manifest["recipe"]["yaml"], self.manifest["recipe"]["source"])
        self.attributes = {a: list(attr.values) for a, attr in self.recipe.attributes.items()}
        self.primary = self.recipe.primary
        self.splits = list(self.recipe.splits)
        self._lock = threading.Lock()
        self._groups: OrderedDict[tuple[str, int], list[bytes]] = OrderedDict()
        self._load()

    # Loading ------------------------------------------------------------------------------
    def _stamp(self) -> tuple[int, int]:
        stat = (self.root / "manifest.json").stat()
        return stat.st_mtime_ns, stat.st_size

    def _load(self) -> None:
        """Read every shard's label and score columns (no images) into arrays."""
        self.stamp = self._stamp()
        self.manifest = read_manifest(self.root)
        paths = shard_paths(self.root, self.manifest)
        columns: dict[str, list] = {c: [] for c in [*_META, *self.attributes, "split"]}
        self.where: list[Where] = []
        for name, path in paths.items():
            parquet = pq.ParquetFile(path)
            present = [c for c in [*_META, *self.attributes] if c in parquet.schema_arrow.names]
            split = self.manifest.shards[name]["split"]
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
        self.sample_ids: list[str] = columns["sample_id"]
        self.index = {sid: i for i, sid in enumerate(self.sample_ids)}
        self.prompts: list[str] = columns["prompt"]
        self.seeds: list[int] = columns["seed"]
        self.attempts = np.array(columns["attempt"], dtype=np.int64)
        self.labels = {a: np.array(columns[a], dtype=np.int16) for a in self.attributes}
        split_ids = {s: i for i, s in enumerate(self.splits)}
        self.split = np.array([split_ids.get(s, -1) for s in columns["split"]], dtype=np.int16)
        self.scores = {k: np.array([np.nan if v is None else v for v in columns[k]], dtype=np.float64)
                       for k in SORTS}
        self.rejected = np.zeros(len(self.sample_ids), dtype=bool)
        self.reasons: dict[int, str] = {}
        waiting, _, _ = review_state(self.root, list(self.manifest.shards), self.index)
        for sid, verdict in waiting.items():
            self._set(self.index[sid], verdict)
        logger.info("review: %d rows in %d shards, %d rejected", len(self), len(paths), int(self.rejected.sum()))

    def refresh(self) -> bool:
        """Reload if ``generate`` changed the folder since; returns whether it did."""
        if self._stamp() == self.stamp:
            return False
        with self._lock:
            self._groups.clear()
            self._load()
        return True

    def __len__(self) -> int:
        return len(self.sample_ids)

    def _set(self, i: int, verdict: Verdict) -> None:
        self.rejected[i] = verdict.verdict == "reject"
        if self.rejected[i]:
            self.reasons[i] = verdict.reason
        else:
            self.reasons.pop(i, None)

    # Queries ------------------------------------------------------------------------------
    def select(self, filters: dict[str, str], sort: str = "clip_score", descending: bool = True,
               status: str = "all") -> np.ndarray:
        """Row indices that pass the filters, grouped by primary label (in recipe order), sorted within."""
        mask = np.ones(len(self), dtype=bool)
        for attr, value in filters.items():
            if attr == "split":
                if value not in self.splits:
                    raise ValueError(f"split: unknown value '{value}'")
                mask &= self.split == self.splits.index(value)
            elif attr in self.attributes:
                if value not in self.attributes[attr]:
                    raise ValueError(f"{attr}: unknown value '{value}'")
                mask &= self.labels[attr] == self.attributes[attr].index(value)
            else:
                raise ValueError(f"unknown filter '{attr}'")
        if status == "rejected":
            mask &= self.rejected
        elif status == "kept":
            mask &= ~self.rejected
        elif status != "all":
            raise ValueError(f"status: must be all, kept or rejected (got '{status}')")
        if sort not in SORTS:
            raise ValueError(f"sort: must be one of {', '.join(SORTS)} (got '{sort}')")
        rows = np.flatnonzero(mask)
        key = self.scores[sort][rows]
        key = np.where(np.isnan(key), np.inf, -key if descending else key)  # missing scores last
        order = np.lexsort((rows, key, self.labels[self.primary][rows]))
        return rows[order]

    def summary(self, i: int) -> dict[str, Any]:
        """What a gallery tile shows."""
        return {
            "i": int(i), "sample_id": self.sample_ids[i], "attempt": int(self.attempts[i]),
            **{a: self.attributes[a][self.labels[a][i]] for a in self.attributes},
            "split": self.splits[self.split[i]] if self.split[i] >= 0 else None,
            **{k: _finite(self.scores[k][i]) for k in SORTS},
            "rejected": bool(self.rejected[i]), "reason": self.reasons.get(int(i), ""),
        }

    def row(self, i: int) -> dict[str, Any]:
        """A row's columns (no image, no embedding), for the detail view."""
        where = self.where[i]
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
        return {**self.summary(i), "columns": row, "shard": where.shard}

    # Images -------------------------------------------------------------------------------
    def _group_images(self, where: Where) -> list[bytes]:
        """The PNG bytes of one row group, from a small LRU cache (a page of thumbnails reads each group once)."""
        key = (where.shard, where.group)
        with self._lock:
            if key in self._groups:
                self._groups.move_to_end(key)
                return self._groups[key]
        table = pq.ParquetFile(self.root / where.shard).read_row_group(where.group, columns=["image"])
        images = [cell["bytes"] for cell in table["image"].to_pylist()]
        with self._lock:
            self._groups[key] = images
            while len(self._groups) > 8:
                self._groups.popitem(last=False)
        return images

    def image(self, i: int) -> bytes:
        where = self.where[i]
        return self._group_images(where)[where.offset]

    def thumbnail(self, i: int) -> bytes:
        image = Image.open(io.BytesIO(self.image(i))).convert("RGB")
        image.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)  # never upscales
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    # Verdicts -----------------------------------------------------------------------------
    def judge(self, items: list[dict[str, Any]], verdict: str, reason: Any = "") -> list[dict[str, Any]]:
        """Save a verdict on rows named by ``{"sample_id", "attempt"}``; the rows as they are now."""
        if verdict not in ("reject", "restore"):
            raise ValueError("verdict: must be reject or restore")
        reason = clean_reason(reason) if verdict == "reject" else ""
        entries, rows = [], []
        for item in items:
            if not isinstance(item, dict):
                raise ValueError("each row must be an object with sample_id and attempt")
            i = self.index.get(item.get("sample_id"))
            if i is None:
                raise ValueError(f"sample_id: '{item.get('sample_id')}' is not in this dataset")
            if item.get("attempt") != int(self.attempts[i]):
                raise LookupError(f"{self.sample_ids[i]}: the dataset now holds attempt {int(self.attempts[i])}; "
                                  "reload the page")
            entries.append(Verdict(self.sample_ids[i], int(self.attempts[i]), image_digest(self.image(i)), verdict,
                                   reason))
            rows.append(i)
        saved = append_verdicts(self.root, entries)
        for i, entry in zip(rows, saved):
            self._set(i, entry)
        return [self.summary(i) for i in rows]

    def config(self) -> dict[str, Any]:
        """What the page needs to draw its filters."""
        return {"name": self.recipe.name, "root": self.root.name, "primary": self.primary,
                "attributes": self.attributes, "splits": self.splits, "sorts": list(SORTS), "rows": len(self),
                "version": self.manifest.get("version"), "page": PAGE}


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def create_app(gallery: Gallery):
    """The Starlette app for one gallery. Handlers that read shards are plain functions, which Starlette runs
    in its thread pool, so thumbnails decode in parallel and never hold up the event loop."""
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

    def row_index(request: Request) -> int | None:
        try:
            i = int(request.path_params["i"])
        except ValueError:
            return None
        return i if 0 <= i < len(gallery) else None

    def page(request: Request) -> Response:
        gallery.refresh()
        config = json.dumps(gallery.config()).replace("<", "\\u003c")  # no "</script>" from a recipe's names
        return HTMLResponse(template.render(config=config, title=gallery.recipe.name))

    def rows(request: Request) -> Response:
        gallery.refresh()
        q = dict(request.query_params)
        try:
            offset, limit = int(q.pop("offset", 0)), min(int(q.pop("limit", PAGE)), MAX_PAGE)
            sort, order, status = q.pop("sort", "clip_score"), q.pop("order", "desc"), q.pop("status", "all")
            selected = gallery.select({k: v for k, v in q.items() if v}, sort, order != "asc", status)
        except ValueError as exc:
            return error(400, str(exc))
        primary = gallery.labels[gallery.primary][selected]
        counts = {v: int((primary == k).sum()) for k, v in enumerate(gallery.attributes[gallery.primary])}
        return JSONResponse({"total": int(len(selected)), "offset": offset, "counts": counts,
                             "rejected": int(gallery.rejected.sum()),
                             "rows": [gallery.summary(i) for i in selected[offset:offset + max(0, limit)]]})

    def row(request: Request) -> Response:
        i = row_index(request)
        return error(404, "no such row") if i is None else JSONResponse(gallery.row(i))

    def image_response(data: bytes, media: str) -> Response:
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    def thumb(request: Request) -> Response:
        i = row_index(request)
        return error(404, "no such row") if i is None else image_response(gallery.thumbnail(i), "image/jpeg")

    def image(request: Request) -> Response:
        i = row_index(request)
        return error(404, "no such row") if i is None else image_response(gallery.image(i), "image/png")

    async def verdicts(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return error(415, "send JSON")
        try:
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("rows"), list):
                raise ValueError("expected {\"rows\": [...], \"verdict\": ..., \"reason\": ...}")
            if await run_in_threadpool(gallery.refresh):
                raise LookupError("the dataset changed since the page was loaded (generate ran); reload the page")
            saved = await run_in_threadpool(gallery.judge, body["rows"], body.get("verdict", "reject"),
                                            body.get("reason"))
        except LookupError as exc:
            return error(409, str(exc))
        except (ValueError, VerdictError) as exc:
            return error(400, str(exc))
        return JSONResponse({"saved": len(saved), "rows": saved, "rejected": int(gallery.rejected.sum())})

    routes = [Route("/", page), Route("/api/rows", rows), Route("/api/row/{i}", row), Route("/thumb/{i}", thumb),
              Route("/image/{i}", image), Route("/api/verdicts", verdicts, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware,
                                                           allowed_hosts=[HOST, "localhost"])])


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
