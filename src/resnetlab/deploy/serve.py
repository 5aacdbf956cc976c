"""`resnetlab serve MODEL`: an HTTP inference server (FastAPI) with a small web page.

Requests are decoded in the request's own thread, then queued; one worker takes up
to ``batch_size`` images (waiting at most ``batch_wait_ms`` for more) and runs them
through the model together, so concurrent clients share forward passes. Every bad
input is a 4xx with a one-line JSON reason, and the server keeps serving.

A multi-label model answers each image's label set (the classes whose probability reaches their
threshold, from thresholds.json or the export's sidecar) and every class's probability, not top-k.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import ClientDisconnect

from resnetlab.data.decode import set_channels
from resnetlab.data.images import BadImage, NotAnImage, load_array
from resnetlab.evaluate.task import SingleLabel

IMAGE_TYPES = {"image/jpeg", "image/png", "image/bmp", "image/gif", "image/webp", "image/tiff",
               "image/x-portable-pixmap", "application/octet-stream"}


@dataclass
class Limits:
    max_bytes: int = 10 * 2**20  # per image
    max_images: int = 32  # per request
    batch_size: int = 32  # images per forward pass
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_queue: int = 64  # requests waiting for the model at most; more are refused with 503 at once
    body_timeout_s: float = 30.0  # a request body must arrive within this (a client sending a byte a second)
    max_connections: int = 128  # open connections at most (uvicorn's limit_concurrency): more get 503


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def load_model(path: Path, *, default_thresholds: bool = False):
    from resnetlab.deploy.export import is_export, load_export
    from resnetlab.deploy.hub import is_hub_model
    from resnetlab.deploy.predictor import Predictor
    from resnetlab.errors import UserError

    if is_hub_model(path):
        return Predictor.load(path, default_thresholds=default_thresholds)
    if not path.exists():
        raise UserError(f"{path} does not exist: give a run folder, a checkpoint, an export or hf-hub:ORG/NAME")
    if is_export(path):
        return load_export(path)
    if path.is_file() and path.suffix != ".pt":
        raise UserError(f"{path} is not a model: give a run folder, a .pt checkpoint, or an export with its .json")
    return Predictor.load(path, default_thresholds=default_thresholds)


def decode(data: bytes, name: str, model, limits: Limits) -> torch.Tensor:
    """Bytes -> uint8 (C, S, S) as the model expects (decoded as training decoded files), or BadRequest."""
    if not data:
        raise BadRequest(400, f"{name}: empty body")
    if len(data) > limits.max_bytes:
        raise BadRequest(413, f"{name}: {len(data):,} bytes is over the limit of {limits.max_bytes:,}")
    try:
        # the pixel bound is checked from the header, before decoding: a bomb is small on the wire
        arr, _ = load_array(data, model.image_size, model.resize)
    except NotAnImage as e:
        raise BadRequest(415, f"{name}: {e} (send JPEG, PNG, BMP, GIF, WebP, TIFF or PPM)") from None
    except BadImage as e:
        raise BadRequest(400, f"{name}: {e}") from None
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
    return set_channels(x, model.channels)[0]


class Batcher:
    """Collects decoded images from concurrent requests into batches for one model thread.

    A plain thread and thread-safe futures, not an asyncio task: requests may come from any
    event loop (uvicorn's, or a test client's per-call loops) and still share batches. The queue
    is bounded: when ``max_queue`` requests wait, a new one is refused (503) rather than letting
    memory and latency grow without limit. ``close()`` stops the thread (FastAPI's lifespan)."""

    _STOP = object()

    def __init__(self, model, limits: Limits):
        self.model, self.limits = model, limits
        self.queue: queue.Queue = queue.Queue(maxsize=limits.max_queue)
        self.batches: list[int] = []  # images in each forward pass so far (the last 1,000), for tests and /health
        self.thread = threading.Thread(target=self._run, name="resnetlab-batcher", daemon=True)
        self.thread.start()

    def _collect(self) -> list | None:
        first = self.queue.get()
        if first is self._STOP:
            return None
        items = [first]
        deadline = time.perf_counter() + self.limits.batch_wait_ms / 1000
        while sum(len(x) for x, _ in items) < self.limits.batch_size:
            left = deadline - time.perf_counter()
            try:
                item = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if item is self._STOP:
                self.queue.put_nowait(item)  # stop after this batch
                break
            items.append(item)
        return items

    def _run(self) -> None:
        while (items := self._collect()) is not None:
            try:
                probs = self.model.probabilities(torch.cat([x for x, _ in items]))
            except Exception as e:  # noqa: BLE001 - reported to every waiting request
                for _, future in items:
                    future.set_exception(e)
                continue
            self.batches = (self.batches + [len(probs)])[-1000:]
            start = 0
            for x, future in items:
                future.set_result(probs[start:start + len(x)])
                start += len(x)

    async def submit(self, images: torch.Tensor) -> torch.Tensor:
        if not self.thread.is_alive():
            raise BadRequest(503, "the model thread has stopped: restart the server")
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self.queue.put_nowait((images, future))
        except queue.Full:
            raise BadRequest(503, f"the server is busy ({self.limits.max_queue} requests waiting): "
                                  "retry in a moment") from None
        return await asyncio.wrap_future(future)

    def close(self, timeout: float = 5.0) -> None:
        """Let queued requests finish, then stop the thread."""
        self.queue.put(self._STOP)
        self.thread.join(timeout)


def answer(model, probs: torch.Tensor, names: list[str], topk: int) -> list[dict]:
    """Single-label: {"filename", "verdict" (the top class, or "unknown" where rejected), "rejected", "top":
    the ``topk`` classes with their probabilities}."""
    task = model_task(model)
    if not task.one_class:
        return multilabel_answer(model, probs, names)
    rejected = task.rejected(probs, model.calibration)
    out = []
    for name, p, verdict, flag in zip(names, probs, task.decide(probs, model, rejected), rejected.tolist()):
        top = p.topk(min(topk, len(model.classes)))
        out.append({"filename": name, "verdict": verdict, "rejected": flag,
                    "top": [{"class": model.classes[i], "probability": round(float(v), 6)}
                            for v, i in zip(top.values.tolist(), top.indices.tolist())]})
    return out


def multilabel_answer(model, probs: torch.Tensor, names: list[str]) -> list[dict]:
    """{"filename", "labels": [classes whose probability >= threshold, in class order], "probabilities":
    {class: p} for every class}; probabilities unrounded (float32), as predict writes them."""
    labels = model_task(model).decide(probs, model)
    return [{"filename": name, "labels": chosen, "probabilities": dict(zip(model.classes, p))}
            for name, chosen, p in zip(names, labels, probs.tolist())]


def model_task(model) -> SingleLabel:
    """The served model's task; any object with probabilities() and classes serves, as single-label."""
    return getattr(model, "task", None) or SingleLabel()


def uvicorn_options(limits: Limits) -> dict:
    """How uvicorn must run the app: past ``max_connections`` it answers 503 at once instead of
    piling up sockets and tasks; an idle keep-alive connection is closed after 5 s."""
    return {"limit_concurrency": limits.max_connections, "timeout_keep_alive": 5}


def model_file(model) -> Path | None:
    """The file the served weights came from: a checkpoint (run or .pt) or an export."""
    path = getattr(model, "checkpoint", None) or getattr(model, "path", None)
    return Path(path) if path else None


def file_sha256(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def create_app(model, limits: Limits | None = None, *, source: str = "") -> FastAPI:
    from resnetlab.deploy.serve_page import PAGE

    if limits is None:
        limits = Limits()  # a fresh one a call: Limits is mutable, so no app shares another's
    batcher = Batcher(model, limits)
    task = model_task(model)
    weights = model_file(model)
    checksum = file_sha256(weights)  # of the file as loaded: /health shows which weights answer

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()  # at shutdown: finish what is queued, then stop the model thread

    app = FastAPI(title="resnetlab", description=f"ResNet image classifier {source}", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(BadRequest)
    async def bad_request(_request, exc: BadRequest):
        return JSONResponse(status_code=exc.status, content={"error": exc.reason})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return PAGE

    @app.get("/health")
    async def health():
        alive = batcher.thread.is_alive()
        body = {"status": "ok" if alive else "model thread stopped", "model": source, "model_thread_alive": alive,
                "queue": batcher.queue.qsize(), "max_queue": limits.max_queue, "model_file": str(weights or ""),
                "model_sha256": checksum, "classes": len(model.classes), "image_size": model.image_size,
                "task": task.name}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/classes")
    async def classes():
        if task.one_class:
            return {"classes": model.classes}
        return {"classes": model.classes, "task": task.name,
                "thresholds": dict(zip(model.classes, task.thresholds_of(model).tolist())),
                "threshold_source": getattr(model, "threshold_source", "")}

    @app.post("/predict")
    async def predict(request: Request, topk: int | None = None):
        """Single-label: the top ``topk`` classes (default 5) and a verdict; multi-label: the label set
        and every class's probability (``topk`` does not apply)."""
        if not task.one_class and topk is not None:
            raise BadRequest(400, "topk is for single-label models: this multi-label model answers a label set "
                                  "(per-class thresholds) and every class's probability")
        topk = 5 if topk is None else topk
        if not 1 <= topk <= 100:
            raise BadRequest(400, f"topk={topk}: give 1..100")
        try:
            items = await asyncio.wait_for(_read_images(request, limits), timeout=limits.body_timeout_s)
        except asyncio.TimeoutError:
            raise BadRequest(408, f"the request body did not arrive within {limits.body_timeout_s:g} s: "
                                  "send it faster (or start the server with a larger --body-timeout)") from None
        loop = asyncio.get_running_loop()
        images = []
        for name, data in items:
            images.append(await loop.run_in_executor(None, decode, data, name, model, limits))
        probs = await batcher.submit(torch.stack(images))
        return {"predictions": answer(model, probs, [n for n, _ in items], topk)}

    return app


async def _read_images(request, limits: Limits) -> list[tuple[str, bytes]]:
    """Multipart (any number of file fields) or one raw image body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=limits.max_images + 1, max_part_size=limits.max_bytes + 1)
        except Exception as e:  # noqa: BLE001 - starlette raises several types for bad forms
            raise BadRequest(400, f"cannot read the multipart form ({str(e)[:100]})") from None
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise BadRequest(400, "the form has no file fields: send images as files (e.g. -F files=@photo.jpg)")
        if len(files) > limits.max_images:
            raise BadRequest(413, f"{len(files)} images in one request; the limit is {limits.max_images}")
        return [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
    if kind not in IMAGE_TYPES:
        raise BadRequest(415, f"content type {kind or 'missing'!r}: send an image (image/jpeg, image/png, ...) "
                              "or multipart/form-data")
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_bytes:
                raise BadRequest(413, f"body is over the limit of {limits.max_bytes:,} bytes")
    except ClientDisconnect:  # the client went away mid-body: nobody to answer, nothing to log
        raise BadRequest(400, "the client disconnected before the body was complete") from None
    return [("body", body)]
