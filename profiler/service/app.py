"""The profiler as an HTTP service: a FastAPI app over one open :class:`Workspace`.

Each server process holds the workspace (model and indexes loaded once) and answers
requests from uvicorn's thread pool; ``profiler serve --workers N`` runs several, each
made by :func:`create_from_environment`. Reads run side by side; writes (``/events``,
``/feedback``, tag pins, forget) take turns across the processes, and the workspace swaps
its state in one step when a write is done, so reads go on meanwhile and never see half
of one; every process follows what the others publish
(:class:`~profiler.service.live.LiveWorkspace`, :mod:`profiler.store`).

Errors are answers, not tracebacks: an unknown shopper or item is a 404 naming it, a
malformed body a 400, a field out of bounds a 422 naming the field, a body over the
limit a 413, a missing or wrong API key a 401, a workspace without a tag model a 409.
Anything else is a 500 whose body says only that the server log has the details.
"""

import contextlib
import hmac
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles

from profiler.embedding import usable_cores
from profiler.privacy import ForgetReport
from profiler.service import schemas as s
from profiler.service.live import LiveWorkspace
from profiler.service.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from profiler.storage import read_json
from profiler.store import Store, WriteLockedError
from profiler.workspace import Workspace

__all__ = [
    "API_KEY_HEADER",
    "MAX_BODY_BYTES",
    "ServeConfig",
    "auto_workers",
    "create_app",
    "create_configured",
    "create_from_environment",
    "one_thread_per_request",
    "read_api_key",
    "shared_folder",
]

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
#: Largest request body accepted (bytes): 10,000 events of a few hundred characters.
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_BATCH = 100
#: The status of each error the workspace raises about a request (a KeyError: 404).
_STATUS = {ValueError: 422, TypeError: 422, FileNotFoundError: 409, WriteLockedError: 409}
STATIC = Path(__file__).with_name("static")


class _BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is a 413, whether it announces its
    length or streams in chunks (counted as they arrive)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(self.limit)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, _too_large_message(self.limit))
            return message

        return await self.app(scope, counted, send)


def _too_large_message(limit: int) -> str:
    return f"request body over {limit} bytes; send fewer events or texts per request"


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": _too_large_message(limit)}, status_code=413)


def _field(loc) -> str:
    # ("body", "list[...RecommendRequest]", 3, "k") -> "[3].k": the union branch drops out
    out = ""
    for position, part in enumerate(loc):
        if position == 0 and part in ("body", "query", "path", "header"):
            continue  # where the field was, not its name
        if isinstance(part, int):
            out += f"[{part}]"
        elif "RecommendRequest" in str(part):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _validation_answer(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    for error in errors:
        if error.get("type") == "json_invalid":
            context = error.get("ctx", {}).get("error", "")
            return JSONResponse(
                {"detail": f"request body is not valid JSON: {context}".rstrip(": ")},
                status_code=400,
            )
    # the one-or-many recommend body fails both ways: show the way the caller meant
    # (an array: the batch; anything else: one request)
    batch = isinstance(getattr(exc, "body", None), list)
    shown = [e for e in errors if _branch(e["loc"]) in (None, batch)] or errors
    found = [
        {"field": _field(e["loc"]), "message": e["msg"].removeprefix("Value error, ")}
        for e in shown
    ]
    return JSONResponse(
        {"detail": "; ".join(f"{e['field']}: {e['message']}" for e in found), "errors": found},
        status_code=422,
    )


def _branch(loc) -> bool | None:
    """True for an error of the batch branch of the recommend body, False for the single
    one, None for any other body."""
    for part in loc:
        if "RecommendRequest" in str(part):
            return str(part).startswith("list[")
    return None


def one_thread_per_request() -> None:
    """Make every library compute on the calling thread only: the server's parallelism is
    across requests, from uvicorn's thread pool.

    Measured on 2 cores (bundled model, bfloat16): one query embedded from a pool thread
    took 10-11 ms with torch's 2 intra-op threads and 5.6 ms with one (4.3 ms on the
    main thread with 2), and with 8 requests in flight every extra OpenMP team only
    competes for the same cores. New threads take torch's setting from here; BLAS and
    OpenMP pools are capped process-wide.
    """
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1)


@dataclass(frozen=True)
class ServeConfig:
    """What ``profiler serve`` hands each server process (as JSON in ``PROFILER_SERVE``
    when there are several: the API key travels as its file's path, never its value)."""

    workspace: str
    api_key_file: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    threads: int | None = None
    peers: str | None = None  # the folder the processes share; None: one process

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        data = json.loads(text)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{SERVE_ENV}: unknown keys {sorted(unknown)}")
        return cls(**data)


SERVE_ENV = "PROFILER_SERVE"


def read_api_key(path: str | os.PathLike[str]) -> str:
    """The key in ``path`` (surrounding whitespace dropped); an error names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such API key file")
    key = path.read_text(encoding="utf-8").strip()
    if not key:
        raise ValueError(f"{path}: the API key file is empty")
    return key


def create_configured(config: ServeConfig) -> FastAPI:
    """One server process: computing on one thread per request, the workspace opened,
    the app made."""
    one_thread_per_request()
    api_key = read_api_key(config.api_key_file) if config.api_key_file else None
    return create_app(
        config.workspace,
        api_key=api_key,
        max_body_bytes=config.max_body_bytes,
        threads=config.threads,
        peers=Path(config.peers) if config.peers else None,
    )


def create_from_environment() -> FastAPI:
    """uvicorn's app factory in each worker process of ``profiler serve --workers N``."""
    raw = os.environ.get(SERVE_ENV)
    if not raw:
        raise RuntimeError(f"{SERVE_ENV} is not set: start the workers with `profiler serve`")
    return create_configured(ServeConfig.from_json(raw))


#: One server process besides its workspace: torch, the model and the libraries
#: (measured: 0.75 GiB resident per process serving the demo workspace).
PROCESS_BYTES = 0.75 * 2**30


def auto_workers(workspace: str | os.PathLike[str]) -> int:
    """Server processes for ``--workers auto``: one per core this process may use, as
    many as half the available memory holds (each process holds the model and its own
    copy of the workspace, taken as twice its published files). On 2 cores, 2 processes
    answered the load benchmark's saturated mix 2.1x as fast as one (p99 of a known
    shopper's recommend 78.6 ms against 181.8)."""
    cores = usable_cores()
    store = Store(Path(workspace))
    current = store.current()
    files = read_json(current.dir / "manifest.json").get("files", {}) if current else {}
    each = PROCESS_BYTES + 2 * sum(entry.get("size", 0) for entry in files.values())
    available = _available_memory()
    fits = int(0.5 * available // each) if available is not None else cores
    return max(1, min(cores, fits))


def _available_memory() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes (Linux), else ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def shared_folder(config: ServeConfig) -> Iterator[ServeConfig]:
    """Set up several server processes: check the workspace and the key file here (a
    clear error before any worker starts), make a private folder the processes share
    (their announcements, the writers' turn and the metrics' files) and put the
    configuration in the environment the workers inherit. Both are undone on exit."""
    if Store(Path(config.workspace)).pointer() is None:
        raise FileNotFoundError(
            f"{config.workspace}: no workspace here (no CURRENT); create one with `profiler build`"
        )
    if config.api_key_file:
        read_api_key(config.api_key_file)
    folder = Path(tempfile.mkdtemp(prefix="profiler-serve-"))
    (folder / "metrics").mkdir(mode=0o700)
    shared = ServeConfig(**{**asdict(config), "peers": str(folder / "peers")})
    saved = {name: os.environ.get(name) for name in (SERVE_ENV, "PROMETHEUS_MULTIPROC_DIR")}
    os.environ[SERVE_ENV] = shared.to_json()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "metrics")
    try:
        yield shared
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)


def create_app(
    workspace: Workspace | str | Path,
    *,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    threads: int | None = None,
    peers: Path | None = None,
) -> FastAPI:
    """The service over ``workspace`` (an open one, or a path to open). With ``api_key``,
    every endpoint but the probes and the page wants it in the ``X-API-Key`` header.
    ``threads`` caps the requests computed at once (the rest wait their turn; default:
    anyio's 40). ``peers`` is the folder that the processes serving this workspace
    together share (``profiler serve --workers N``); while the app runs it follows the
    generations other processes publish (:class:`~profiler.service.live.LiveWorkspace`)."""
    owned = not isinstance(workspace, Workspace)  # opened here: closed when the app stops
    ws = Workspace.open(workspace) if owned else workspace
    live = LiveWorkspace(ws, peers=peers)
    metrics = ServiceMetrics(multiprocess=peers is not None)
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)

    def authorised(key: Annotated[str | None, Depends(key_header)]) -> None:
        if api_key is None:
            return
        if key is None:
            raise HTTPException(401, f"missing API key: send it in the {API_KEY_HEADER} header")
        if not hmac.compare_digest(key.encode(), api_key.encode()):
            raise HTTPException(401, "wrong API key")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if threads is not None:
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        live.start()
        try:
            yield
        finally:
            # a process that stops withdraws its announcement: writes stop waiting for it
            if owned:
                live.close()
            else:
                live.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="interest-profiler",
        version=_version(),
        description="What shoppers are interested in, from the text they leave behind: "
        "recommendations with reasons, interest tags with evidence, profiles, feedback "
        "and forgetting, over one workspace.",
    )
    # the probes, metrics and the page answer without the key (the page asks for it);
    # everything under ``api`` wants it
    api = APIRouter(dependencies=[Depends(authorised)])
    app.state.workspace = live
    app.state.metrics = metrics
    app.add_middleware(_BodyLimit, limit=max_body_bytes)

    in_flight = [0]  # requests this process is answering (the event loop's thread only)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        status = 500
        in_flight[0] += 1
        try:
            response = await call_next(request)
            status = response.status_code
            if peers is not None and in_flight[0] > 1:
                # Busy: hand the connection back, so that the client's next request
                # connects again and goes to the process that accepts first, usually an
                # idle one. The kernel deals persistent connections out blindly: 8 of
                # them were split 7/1 between two processes in 1 of 8 trials, 6/2 in 2.
                response.headers["connection"] = "close"
            return response
        finally:
            in_flight[0] -= 1
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            metrics.observe(request.method, path, status, time.perf_counter() - started)

    # -- errors ---------------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _validation_answer(exc)

    @app.exception_handler(KeyError)
    async def unknown(request: Request, exc: KeyError):
        message = exc.args[0] if exc.args else "unknown id"
        return JSONResponse({"detail": str(message)}, status_code=404)

    async def answer(request: Request, exc: Exception):
        status = next(_STATUS[k] for k in type(exc).__mro__ if k in _STATUS)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    for kind in _STATUS:
        app.add_exception_handler(kind, answer)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); the server log has the details"},
            status_code=500,
        )

    # -- probes and the page -----------------------------------------------------------

    @app.get("/livez", tags=["probes"])
    def livez() -> dict:
        """The process answers."""
        return {"status": "alive"}

    @app.get("/readyz", tags=["probes"])
    def readyz():
        """The workspace is open, serves the published generation and can recommend."""
        if live.behind is not None:
            detail = f"cannot serve the published generation ({live.behind})"
            return JSONResponse({"status": "not ready", "detail": detail}, status_code=503)
        with live.reading() as ws:
            try:
                scorer = ws.recommender.scorer_.kind
            except ValueError as exc:
                return JSONResponse({"status": "not ready", "detail": str(exc)}, status_code=503)
            return {
                "status": "ready",
                "process": os.getpid(),  # which of the server's processes answered
                "generation": ws.generation,
                "scorer": scorer,
                **ws.manifest["counts"],
            }

    @app.get("/metrics", tags=["probes"], response_class=Response)
    def prometheus() -> Response:
        """Requests, latency histogram and errors per route, in Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -- reads ------------------------------------------------------------------------------

    def recommend_one(ws: Workspace, request: s.RecommendRequest) -> s.RecommendResponse:
        results = ws.recommend(
            request.user_id,
            history=request.history,
            k=request.k,
            categories=request.categories,
            diversity=request.diversity,
            explore=request.explore,
            seed=request.seed,
        )
        return s.RecommendResponse(
            user_id=request.user_id, history=request.history, items=results.records()
        )

    @api.post("/recommend", tags=["recommend"])
    def recommend(
        body: Annotated[s.RecommendRequest | list[s.RecommendRequest], Body()],
    ) -> s.RecommendResponse | list[s.RecommendResponse]:
        """Items for one shopper (an object) or for a batch (an array of up to 100), each
        a known ``user_id`` or the ``history`` texts of an anonymous shopper."""
        with live.reading() as ws:
            if isinstance(body, list):
                if not body or len(body) > MAX_BATCH:
                    raise ValueError(f"a batch holds 1 to {MAX_BATCH} requests, got {len(body)}")
                return [recommend_one(ws, r) for r in body]
            return recommend_one(ws, body)

    @api.post("/search", tags=["items"])
    def search(body: s.SearchRequest) -> s.SearchResponse:
        """Items most similar to a free-text query."""
        with live.reading() as ws:
            items = ws.search(body.query, body.k).records()
        return s.SearchResponse(query=body.query, items=items)

    @api.get("/items/{item_id:path}/similar", tags=["items"])
    def similar(item_id: str, k: Annotated[int, Query(ge=1, le=s.MAX_K)] = 10) -> s.ItemsResponse:
        """Catalogue items closest to this one."""
        with live.reading() as ws:
            items = ws.similar_items(item_id, k).records()
        return s.ItemsResponse(item_id=item_id, items=items)

    @api.get("/items/{item_id:path}/audience", tags=["items"])
    def audience(
        item_id: str, k: Annotated[int, Query(ge=1, le=s.MAX_K)] = 10
    ) -> s.AudienceResponse:
        """Shoppers most likely to want this item (nearest profiles in the user index;
        stored ids, pseudonyms in a pseudonymous workspace)."""
        with live.reading() as ws:
            users = [{"user_id": u, "score": v} for u, v in ws.audience(item_id, k)]
        return s.AudienceResponse(item_id=item_id, users=users)

    @api.get("/users/{user_id:path}/tags", tags=["shoppers"])
    def user_tags(user_id: str, top: Annotated[int, Query(ge=1, le=50)] = 5) -> s.TagsResponse:
        """Her interest tags with confidence and the events behind each."""
        with live.reading() as ws:
            tags = [t.to_dict() for t in ws.tags(user_id, top=top)]
        return s.TagsResponse(user_id=user_id, tags=tags)

    @api.post("/tags", tags=["tags"])
    def text_tags(body: s.TextTagsRequest) -> list[s.TagsResponse]:
        """Interest tags of free texts: one answer per text, or one for all of them with
        ``joined`` (the texts of one shopper)."""
        groups = [body.texts] if body.joined else [[text] for text in body.texts]
        with live.reading() as ws:
            return [
                s.TagsResponse(
                    user_id=None,
                    text="\n".join(group),
                    tags=[t.to_dict() for t in ws.tags(texts=group, top=body.top)],
                )
                for group in groups
            ]

    @api.get("/users/{user_id:path}/profile", tags=["shoppers"])
    def profile(
        user_id: str, events: Annotated[int, Query(ge=0, le=100)] = 10
    ) -> s.ProfileResponse:
        """Her tags with evidence, her interest centres (each by its nearest items) and her
        recent events."""
        tags, note = None, None
        with live.reading() as ws:
            described = ws.describe(user_id, events=events)
            try:
                tags = [t.to_dict() for t in ws.tags(user_id)]
            except FileNotFoundError as exc:
                note = str(exc)
        stored = described.pop("user_id")
        return s.ProfileResponse(
            user_id=user_id, stored_id=stored, tags=tags, tags_note=note, **described
        )

    # -- writes ---------------------------------------------------------------------------

    @api.post("/users/{user_id:path}/tags", tags=["shoppers"])
    def change_tag(user_id: str, body: s.TagRequest) -> s.TagsResponse:
        """Pin or remove one of her tags; answers her tags after the change."""
        with live.writing() as ws:
            (ws.pin_tag if body.action == "pin" else ws.remove_tag)(user_id, body.tag)
            tags = [t.to_dict() for t in ws.tags(user_id)]
        return s.TagsResponse(user_id=user_id, tags=tags)

    @api.post("/events", tags=["shoppers"])
    def events(body: s.EventsRequest) -> s.EventsResponse:
        """Append events; her profile, the user index and the counts update. Rows the
        loader rejects go to the workspace's quarantine with the reason."""
        frame = pd.DataFrame([e.model_dump() for e in body.events])
        for column in ("device", "channel"):
            if frame[column].isna().all():
                frame = frame.drop(columns=column)
        frame["item_id"] = frame["item_id"].fillna("")
        frame["text"] = frame["text"].fillna("")
        with live.writing() as ws:
            added = ws.add_events(frame)
            generation = ws.generation
        return s.EventsResponse(added=added, rejected=len(frame) - added, generation=generation)

    @api.post("/feedback", tags=["shoppers"])
    def feedback(body: s.FeedbackRequest) -> s.FeedbackResponse:
        """Her answer to a shown item: ``liked`` or a graded ``reward`` in [0, 1]; the
        same ``event_id`` twice counts once."""
        with live.writing() as ws:
            counted = ws.feedback(
                body.user_id,
                body.item_id,
                liked=body.liked,
                reward=body.reward,
                timestamp=body.timestamp,
                event_id=body.event_id,
            )
        return s.FeedbackResponse(user_id=body.user_id, item_id=body.item_id, counted=counted)

    @api.delete("/users/{user_id:path}", tags=["shoppers"])
    def forget(user_id: str, retrain: bool = True, keep_models: bool = False) -> ForgetReport:
        """Delete her everywhere (events, vectors, profile, user index, overrides, explore
        state, quarantined rows) and say what went."""
        with live.writing() as ws:
            return ws.forget(user_id, retrain=retrain, keep_models=keep_models)

    app.include_router(api)
    return app


def _version() -> str:
    from profiler import __version__

    return __version__
