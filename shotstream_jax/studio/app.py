"""The studio's ASGI app: the page at `/`, the JSON director API and the live WebSocket.

Every handler returns at once: requests only touch the director's state under
its lock, and the two slow things, generation (the director's worker thread)
and mp4 encoding (a thread-pool thread), never run on the event loop.
Errors are JSON `{"error": message}` with a 4xx status; nothing else (no stack
trace) reaches a client.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from shotstream_jax.studio.director import Director, StudioError

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
# A client that stops reading is dropped once this many events wait for it (memory stays bounded).
MAX_PENDING_EVENTS = 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StudioError(400, f"malformed JSON body: {e}") from None
    if not isinstance(body, dict):
        raise StudioError(400, "the JSON body must be an object")
    return body


def create_app(pipe) -> Starlette:
    """The studio for a loaded `ShotStream` (its director is `app.state.director`)."""
    director = Director(pipe)

    async def index(request):
        return FileResponse(STATIC / "index.html")

    async def info(request):
        return JSONResponse(director.info())

    async def create_story(request):
        body = await _body(request)
        if "global_caption" not in body:
            raise StudioError(400, "missing 'global_caption'")
        story = director.create_story(body["global_caption"], body.get("seed"))
        return JSONResponse({"id": story.id, "seed": story.seed,
                             "unknown_words": director.unknown_words(story.global_caption)}, status_code=201)

    async def story(request):
        sid = request.path_params["id"]
        if request.method == "DELETE":
            director.delete(sid)
            return JSONResponse({"id": sid, "deleted": True})
        return JSONResponse(director.snapshot(sid))

    async def add_shot(request):
        sid = request.path_params["id"]
        director.story(sid)  # 404 before 400: the story must exist
        body = await _body(request)
        if "prompt" not in body:
            raise StudioError(400, "missing 'prompt'")
        index, unknown = director.add_shot(sid, body["prompt"])
        return JSONResponse({"index": index, "unknown_words": unknown}, status_code=202)

    async def cut(request):
        return JSONResponse({"index": director.cut(request.path_params["id"])}, status_code=202)

    async def rewind(request):
        sid = request.path_params["id"]
        director.story(sid)
        body = await _body(request)
        if "shots" not in body:
            raise StudioError(400, "missing 'shots' (the number of finished shots to keep)")
        director.rewind(sid, body["shots"])
        return JSONResponse(director.snapshot(sid))

    async def video(request):
        sid = request.path_params["id"]
        data = await run_in_threadpool(_mp4, director.finished_frames, sid, pipe.fps)
        return Response(data, media_type="video/mp4",
                        headers={"Content-Disposition": f'attachment; filename="story-{sid}.mp4"'})

    async def thumbnail(request):
        jpg = await run_in_threadpool(director.thumbnail, request.path_params["id"], request.path_params["index"])
        return Response(jpg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def live(ws: WebSocket):
        await ws.accept()
        sid = ws.path_params["id"]
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue(maxsize=MAX_PENDING_EVENTS)

        def enqueue(event):
            if sender.done():
                return
            try:
                events.put_nowait(event)
            except asyncio.QueueFull:  # the client stopped reading: drop it rather than buffer without end
                sender.cancel()
                loop.create_task(_close(ws, 1013, "too far behind; reconnect"))

        def listener(event):  # called from the worker thread: hop onto the loop, never block
            loop.call_soon_threadsafe(enqueue, event)

        try:
            state = director.subscribe(sid, listener)
        except StudioError as e:
            await ws.send_json({"type": "error", "error": str(e)})
            await ws.close(code=4404)
            return
        sender = asyncio.create_task(_send(ws, events, {"type": "state", "story": state}))
        try:
            while not sender.done():  # the client says nothing; this only notices it leaving
                receive = asyncio.create_task(ws.receive())
                done, _ = await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
                if receive in done and receive.result()["type"] == "websocket.disconnect":
                    break
                receive.cancel()
        finally:
            director.unsubscribe(sid, listener)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def json_error(request, exc: Exception):
        if isinstance(exc, StudioError):
            return _error(exc.status, str(exc))
        if isinstance(exc, HTTPException):
            return _error(exc.status_code, exc.detail)
        log.error("studio: unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error (details in the server log)")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        director.start()
        try:
            yield
        finally:
            await run_in_threadpool(director.stop)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/info", info),
            Route("/api/stories", create_story, methods=["POST"]),
            Route("/api/stories/{id}", story, methods=["GET", "DELETE"]),
            Route("/api/stories/{id}/shots", add_shot, methods=["POST"]),
            Route("/api/stories/{id}/cut", cut, methods=["POST"]),
            Route("/api/stories/{id}/rewind", rewind, methods=["POST"]),
            Route("/api/stories/{id}/video.mp4", video),
            Route("/api/stories/{id}/shots/{index:int}/thumbnail.jpg", thumbnail),
            WebSocketRoute("/api/stories/{id}/live", live),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={StudioError: json_error, HTTPException: json_error, Exception: json_error},
        lifespan=lifespan,
    )
    app.state.director = director
    return app


async def _send(ws: WebSocket, events: asyncio.Queue, first: dict) -> None:
    """Forward a listener's events to its client, in order, until the story is deleted."""
    await ws.send_json(first)
    while True:
        event = await events.get()
        if isinstance(event, bytes):
            await ws.send_bytes(event)
        else:
            await ws.send_json(event)
            if event["type"] == "deleted":
                await ws.close()
                return


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=code, reason=reason)


def _mp4(finished_frames, sid: str, fps: int) -> bytes:
    """The story's finished shots as mp4 bytes (in a worker thread: gathering and encoding take a while)."""
    from shotstream_jax.video_io import VideoWriter
    frames = finished_frames(sid)
    with tempfile.TemporaryDirectory(prefix="shotstream-studio-") as d:
        path = os.path.join(d, "story.mp4")
        with VideoWriter(path, fps=fps) as w:
            w.write(frames)
        return Path(path).read_bytes()
