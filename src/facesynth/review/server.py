"""``facesynth review``'s HTTP server: the gallery (:mod:`.gallery`) as a small ASGI app (Starlette, served by
uvicorn; the ``review`` extra) with JSON routes; every error is a JSON answer with its status, never a 500.

The server listens on 127.0.0.1 only and answers only requests addressed to it by
that name (no DNS rebinding); verdicts are accepted only as JSON, which another
site's page cannot send without a CORS preflight that is never granted.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import FacesynthError, OutputError, shorten
from .gallery import MAX_PAGE, MAX_ROWS, PAGE, Gallery, Rows

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_BODY = 2 * 1024 * 1024  # bytes of one verdict request


def require_server():
    """Starlette and uvicorn, or one line saying how to get them."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise FacesynthError("facesynth review needs the review extra: pip install 'facesynth[review]'") from None


def read_only_store(url: str) -> str:
    """Why a store's gallery records no verdict (its review log would need a lock the store cannot give)."""
    return (f"read-only: '{shorten(url, 120)}' is in object storage; copy it to a folder and review that to "
            "record verdicts")


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


def create_app(gallery: Gallery, read_only: str | None = None):
    """The Starlette app for one gallery. Handlers that read shards are plain functions, which Starlette runs
    in its thread pool, so thumbnails decode in parallel and never hold up the event loop.

    Every answer that is not a page or an image is JSON; every failure is a JSON ``{"error": ...}`` the page
    shows: 400 for a malformed request, 404 for no such row, 409 when the folder changed, 413 for a body
    over ``MAX_BODY``, 415 for a body that is not JSON, 503 when the verdict cannot be written, 403 with
    ``read_only`` (why verdicts cannot be recorded here) for every verdict.
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
        (resources.files("facesynth.review") / "templates" / "review.html").read_text(encoding="utf-8"))

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
        if read_only:
            raise BadRequest(403, read_only)
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

    def __init__(self, root: str | Path, port: int = DEFAULT_PORT, read_only: str | None = None):
        require_server()
        import uvicorn

        self.gallery = Gallery(root)
        self.socket = bind(port)
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(create_app(self.gallery, read_only), log_level="warning", lifespan="off")
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
