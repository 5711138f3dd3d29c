"""The HTTP routes around one warm model (FastAPI): ``POST /predict``, ``GET /model``, ``GET /health``.

Errors are one line of JSON, ``{"error": "..."}``, with the status saying whose fault it is: 400 (a bad
file or request), 401 (a missing or wrong token), 408 (the body came too slowly), 413 (an upload or an
image over the limits), 415 (not an image), 422 (an image the model cannot take), 503 (the queue is full,
with ``Retry-After``), 500 (a bug: logged with its traceback, the server goes on).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from unetseg.data.labels import ClassMap
from unetseg.errors import UnetsegError, first_line
from unetseg.inference.segmenter import Segmenter
from unetseg.serve import codecs
from unetseg.serve.batching import Batcher, Busy
from unetseg.serve.codecs import RequestError, Upload
from unetseg.serve.settings import Limits
from unetseg.serve.upload import read_upload

log = logging.getLogger("unetseg.serve")


class Service:
    """What the routes share: the model, its batcher, the limits and the token (``request.app.state``)."""

    def __init__(self, segmenter: Segmenter, limits: Limits, token: str | None) -> None:
        self.segmenter, self.limits = segmenter, limits.with_budget(segmenter.config.data.max_image_gib)
        self.token = None if token is None else token.encode()
        run = segmenter.predict_instances_many if segmenter.task == "instances" else segmenter.predict_many
        self.batcher: Batcher[Any] = Batcher(lambda images, spacing: run(images, spacing=spacing),
                                             queue_size=limits.queue_size, max_batch=limits.max_batch,
                                             wait_s=limits.batch_wait_s)

    def warm_up(self) -> None:
        """One prediction of a blank tile, so the first request does not pay for the first pass."""
        seg = self.segmenter
        shape = tuple(seg.predictor.tile or (64,) * seg.spatial_dims)
        seg.predict_many([np.zeros((seg.channels, *shape), np.float32)])

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(self.warm_up)
        self.batcher.start()
        try:
            yield
        finally:  # uvicorn has answered every request in flight; the queue is empty
            await run_in_threadpool(self.batcher.close)


def create_app(segmenter: Segmenter, *, limits: Limits | None = None, token: str | None = None) -> FastAPI:
    """The application serving ``segmenter`` (``token``: the bearer token every request but ``/health``
    must carry; None: no authentication)."""
    service = Service(segmenter, limits or Limits(), token)
    # no /docs, /redoc or /openapi.json: three routes (README), no pages pulling scripts from a CDN
    app = FastAPI(title="unetseg", version=version(), lifespan=service.lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/model", model, methods=["GET"], dependencies=[Depends(authorized)])
    app.add_api_route("/predict", predict, methods=["POST"], dependencies=[Depends(authorized)],
                      response_class=Response)
    app.add_exception_handler(UnetsegError, _user_error)
    app.add_exception_handler(Busy, _busy)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _bug)
    return app


def version() -> str:
    try:
        return metadata.version("unetseg")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def authorized(request: Request) -> None:
    """The bearer token, compared in constant time (none configured: everyone)."""
    token = _service(request).token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
        raise RequestError("missing or wrong bearer token (Authorization: Bearer TOKEN)", 401)


async def health(request: Request) -> JSONResponse:
    """Liveness and load; 503 when the worker is gone or the server is stopping."""
    stats = _service(request).batcher.stats()
    ok = stats["worker_alive"] and not stats["stopping"]
    return JSONResponse({"status": "ok" if ok else "unavailable", **stats}, status_code=200 if ok else 503)


async def model(request: Request) -> dict[str, Any]:
    """What the model is and what the server accepts."""
    return describe(_service(request))


def describe(service: Service) -> dict[str, Any]:
    seg, p, data = service.segmenter, service.segmenter.predictor, service.segmenter.config.data
    limits = service.limits
    return {
        "name": seg.config.model.name, "source": seg.source.name, "task": seg.task,
        "classes": codecs.plain(seg.classes), "spatial_dims": seg.spatial_dims, "channels": seg.channels,
        "tile": list(p.tile) if p.tile else None, "overlap": p.overlap, "tta": p.tta,
        "tile_batch": p.batch_size, "normalization": data.normalization,
        "pixel_size_um": data.pixel_size, "spacing": data.spacing, "downsample": data.downsample,
        "instance_target": data.instance_target if seg.task == "instances" else None,
        "device": str(seg.engine.device), "unetseg_version": version(),
        "uploads": ["png", "jpeg", "tiff", "nifti"], "formats": list(codecs.FORMATS),
        "limits": {"max_upload_bytes": limits.max_upload_bytes,
                   "max_image_bytes": int(limits.max_image_bytes or 0), "queue_size": limits.queue_size,
                   "max_batch": limits.max_batch},
    }


async def predict(request: Request, format: str | None = None, values: str = "index") -> Response:
    """Segment the uploaded image: the answer in the upload's format, or ``format`` (``json``, ``png``,
    ``tiff``, ``nifti``; ``Accept: application/json`` also asks for JSON); ``values=original``: the
    training masks' values instead of class indices (semantic models)."""
    service = _service(request)
    seg, limits = service.segmenter, service.limits
    fmt = codecs.check_format(format or _accepts_json(request), seg.spatial_dims)
    class_map = _values(service, values)
    with service.batcher.admit() as ticket:
        data = await read_upload(request, limits.max_upload_bytes, limits.upload_seconds)
        upload = await run_in_threadpool(codecs.decode_upload, data, seg.spatial_dims, seg.channels,
                                         limits.max_image_bytes or 0)
        del data
        future = ticket.submit(upload.image, upload.spacing)
    result = await asyncio.wrap_future(future)
    return await run_in_threadpool(_respond, service, result, upload, fmt or upload.reply_format, class_map)


def _accepts_json(request: Request) -> str | None:
    accept = request.headers.get("accept", "").lower()
    return "json" if "application/json" in accept and "image/" not in accept else None


def _values(service: Service, values: str) -> ClassMap | None:
    if values not in ("index", "original"):
        raise RequestError(f"values {values!r}: expected index or original")
    if values == "index":
        return None
    config = service.segmenter.config
    if config.data.task == "instances":
        raise RequestError("values=original does not apply to an instance model: it answers object ids", 422)
    if not config.data.class_values:
        raise RequestError("this model does not record its mask values; use values=index", 422)
    return ClassMap(list(config.data.class_values))


def _respond(service: Service, result: Any, upload: Upload, fmt: str, class_map: ClassMap | None) -> Response:
    seg = service.segmenter
    if seg.task == "instances":
        ids, table = result
        if fmt == "json":
            return JSONResponse(codecs.instances_json(ids, table))
        out = codecs.encode_ids(ids, upload, fmt)
        headers = {"X-Unetseg-Objects": str(len(table["id"]))}
    else:
        if fmt == "json":
            return JSONResponse(codecs.labels_json(result, seg.classes))
        out = codecs.encode_labels(result if class_map is None else class_map.decode(result), upload, fmt)
        headers = {}
    headers["Content-Disposition"] = f'inline; filename="{out.filename}"'
    return Response(out.body, media_type=out.media_type, headers=headers)


# ------------------------------------------------------------------------------------------ errors
def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _user_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnetsegError)
    status = codecs.status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _error(status, first_line(exc, 400), headers)


async def _busy(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Busy)
    return _error(503, str(exc), {"Retry-After": str(exc.retry_after)})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}) or None)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error(400, f"{where}: {first.get('msg', 'invalid request')}")


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")
