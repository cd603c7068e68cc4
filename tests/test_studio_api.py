"""Studio API against fresh `ShotStream` sessions as the reference: every endpoint and error, exact branching,
cut, several stories on one worker, and the memory a rewound or deleted story gives back.

The studio runs the toy model (fixed random weights); `SteppedPipe` wraps it so a test can hold the worker between chunks
(to cut a shot at a known chunk, or to see the queue while a shot is in progress).
"""
import contextlib
import gc
import io
import itertools
import json
import socket
import threading
import time
import weakref

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from shotstream_jax import ShotStream, default_model
from shotstream_jax.studio import create_app
from shotstream_jax.video_io import read_video


class SteppedPipe:
    """A ShotStream whose sessions, while paused, wait for a `step()` before making each chunk."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.fail_at_chunk = None  # make the next shot raise before this chunk
        self._cv = threading.Condition()
        self._paused, self._permits = False, 0

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def session(self, global_caption, seed=0):
        return SteppedSession(self, self.pipe.session(global_caption, seed=seed))

    def pause(self):
        with self._cv:
            self._paused, self._permits = True, 0

    def step(self, n=1):
        with self._cv:
            self._permits += n
            self._cv.notify_all()

    def resume(self):
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    def gate(self):
        with self._cv:
            self._cv.wait_for(lambda: not self._paused or self._permits > 0)
            if self._paused:
                self._permits -= 1


class SteppedSession:
    def __init__(self, stepper, session):
        self.stepper, self.session = stepper, session

    def __getattr__(self, name):
        return getattr(self.session, name)

    def next_shot(self, prompt):
        with contextlib.closing(self.session.next_shot(prompt)) as gen:
            for c in itertools.count():
                self.stepper.gate()
                if self.stepper.fail_at_chunk == c:
                    self.stepper.fail_at_chunk = None
                    raise RuntimeError("injected failure\nsecond line of the message")
                try:
                    frames = next(gen)
                except StopIteration:
                    return
                yield frames


@pytest.fixture(scope="module")
def pipe():
    return ShotStream(*default_model.build())  # the toy model: 81-frame shots of 7 chunks


@pytest.fixture(scope="module")
def stepper(pipe):
    return SteppedPipe(pipe)


@pytest.fixture(scope="module")
def app(stepper):
    return create_app(stepper)


@pytest.fixture
def client(app, stepper):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    stepper.resume()


def reference(pipe, caption, seed, prompts, cut_after=None):
    """uint8 frames of each shot of a fresh session; shot i is cut after cut_after[i] chunks if given."""
    session = pipe.session(caption, seed=seed)
    shots = []
    for i, p in enumerate(prompts):
        chunks = []
        with contextlib.closing(session.next_shot(p)) as gen:
            for frames in gen:
                chunks.append(frames)
                if cut_after and cut_after.get(i) == len(chunks):
                    break
        shots.append(np.concatenate(chunks))
    return shots


def wait_until(cond, timeout=120.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def story_state(client, sid):
    r = client.get(f"/api/stories/{sid}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_idle(client, sid):
    def idle():
        s = story_state(client, sid)
        return not s["busy"] and all(x["done"] for x in s["shots"])
    wait_until(idle)
    return story_state(client, sid)


def new_story(client, caption="A rainy night in a neon city.", seed=None):
    body = {"global_caption": caption} if seed is None else {"global_caption": caption, "seed": seed}
    r = client.post("/api/stories", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def add_shot(client, sid, prompt):
    r = client.post(f"/api/stories/{sid}/shots", json={"prompt": prompt})
    assert r.status_code == 202, r.text
    return r.json()["index"]


def studio_frames(app, sid, index):
    return np.concatenate(app.state.director.story(sid).shots[index].chunks)


def assert_error(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and body["error"]
    assert "Traceback" not in r.text and 'File "' not in r.text


def test_story_streams_over_the_websocket(client, app, pipe):
    """Reference: a fresh session's frames; the live socket sends every chunk as an event plus its JPEG frames."""
    page = client.get("/")
    assert page.status_code == 200 and "<title>ShotStream Studio</title>" in page.text
    assert all(client.get(f"/static/studio.{ext}").status_code == 200 for ext in ("js", "css"))
    info = client.get("/api/info").json()
    assert info == {"height": pipe.height, "width": pipe.width, "fps": pipe.fps,
                    "chunks_per_shot": pipe.chunks_per_shot, "max_prompt_tokens": pipe.text_encoder.text_len}
    sid = new_story(client, seed=11)
    with client.websocket_connect(f"/api/stories/{sid}/live") as ws:
        first = ws.receive_json()
        assert first["type"] == "state" and first["story"]["shots"] == [] and first["story"]["seed"] == 11
        assert add_shot(client, sid, "Wide shot of an empty street.") == 0
        events, frames = [], []
        while not events or events[-1]["type"] != "shot_done":
            m = ws.receive()
            if m.get("bytes") is not None:
                frames.append(np.asarray(Image.open(io.BytesIO(m["bytes"]))))
                events[-1]["received"] += 1
            else:
                ev = json.loads(m["text"])
                if ev["type"] != "state":
                    events.append(dict(ev, received=0))
    assert events[0]["type"] == "shot_start" and events[0]["chunks"] == pipe.chunks_per_shot
    chunks = events[1:-1]
    assert [e["chunk"] for e in chunks] == list(range(pipe.chunks_per_shot))
    assert all(e["type"] == "chunk" and e["shot"] == 0 and e["received"] == e["frames"] and e["fps"] > 0
               for e in chunks)
    assert events[-1]["frames"] == len(frames) == 81 and not events[-1]["cut"]
    ref = reference(pipe, "A rainy night in a neon city.", 11, ["Wide shot of an empty street."])[0]
    np.testing.assert_array_equal(studio_frames(app, sid, 0), ref)
    # JPEG is lossy: the frames on the socket are close to the exact ones, not equal.
    assert np.stack(frames).shape == ref.shape
    assert np.abs(np.stack(frames).astype(int) - ref).mean() < 40
    s = story_state(client, sid)
    assert s == {"id": sid, "global_caption": "A rainy night in a neon city.", "seed": 11, "busy": False,
                 "queued": 0, "shots": [{"index": 0, "prompt": "Wide shot of an empty street.", "frames": 81,
                                         "done": True, "state": "done"}]}
    thumb = client.get(f"/api/stories/{sid}/shots/0/thumbnail.jpg")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (pipe.width, pipe.height)


def test_video_and_exact_branching(client, app, pipe):
    """Reference: fresh sessions with the same seed given the kept shots and then the new prompt."""
    cap = "Two friends on a road trip."
    sid = new_story(client, caption=cap, seed=5)
    add_shot(client, sid, "The car on a desert highway.")
    add_shot(client, sid, "Inside the car, laughing.")
    s = wait_idle(client, sid)
    assert [x["frames"] for x in s["shots"]] == [81, 81]
    r = client.get(f"/api/stories/{sid}/video.mp4")
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    path = f"/tmp/studio-test-{sid}.mp4"
    with open(path, "wb") as f:
        f.write(r.content)
    video, fps = read_video(path)
    assert video.shape == (162, pipe.height, pipe.width, 3) and fps == pipe.fps

    old_second = studio_frames(app, sid, 1)
    r = client.post(f"/api/stories/{sid}/rewind", json={"shots": 1})
    assert r.status_code == 200 and [x["index"] for x in r.json()["shots"]] == [0]
    add_shot(client, sid, "A storm rolls in over the dunes.")
    wait_idle(client, sid)
    ref = reference(pipe, cap, 5, ["The car on a desert highway.", "A storm rolls in over the dunes."])
    np.testing.assert_array_equal(studio_frames(app, sid, 0), ref[0])
    np.testing.assert_array_equal(studio_frames(app, sid, 1), ref[1])
    assert not np.array_equal(old_second, ref[1])

    # Rewind to nothing: the new first shot is a fresh story's first shot.
    client.post(f"/api/stories/{sid}/rewind", json={"shots": 0})
    add_shot(client, sid, "Sunrise over the empty road.")
    wait_idle(client, sid)
    np.testing.assert_array_equal(studio_frames(app, sid, 0), reference(pipe, cap, 5, ["Sunrise over the empty road."])[0])


def test_cut_keeps_the_chunks_made_and_starts_the_next_prompt(client, app, pipe, stepper):
    """Reference: a fresh session whose first shot's generator is closed after 2 chunks."""
    cap = "A lighthouse keeper's long night."
    stepper.pause()
    sid = new_story(client, caption=cap, seed=9)
    add_shot(client, sid, "Waves crash on the rocks.")
    add_shot(client, sid, "The lamp turns slowly.")
    stepper.step()
    wait_until(lambda: story_state(client, sid)["shots"][0]["frames"] == 9)
    r = client.post(f"/api/stories/{sid}/cut")
    assert r.status_code == 202 and r.json() == {"index": 0}
    # The chunk being generated still arrives; then the shot ends and the queued prompt starts.
    stepper.step()
    wait_until(lambda: story_state(client, sid)["shots"][0]["done"])
    stepper.resume()
    s = wait_idle(client, sid)
    assert [(x["state"], x["frames"]) for x in s["shots"]] == [("cut", 21), ("done", 81)]
    ref = reference(pipe, cap, 9, ["Waves crash on the rocks.", "The lamp turns slowly."], cut_after={0: 2})
    uncut = reference(pipe, cap, 9, ["Waves crash on the rocks."])[0]
    np.testing.assert_array_equal(studio_frames(app, sid, 0), uncut[:21])  # chunks are causal: a prefix
    np.testing.assert_array_equal(studio_frames(app, sid, 0), ref[0])
    assert len(app.state.director.story(sid).session.shots[0].frames) == 21  # the history the story goes on from
    np.testing.assert_array_equal(studio_frames(app, sid, 1), ref[1])
    r = client.get(f"/api/stories/{sid}/video.mp4")
    with open(f"/tmp/studio-test-{sid}.mp4", "wb") as f:
        f.write(r.content)
    assert len(read_video(f"/tmp/studio-test-{sid}.mp4")[0]) == 21 + 81


def test_two_stories_share_the_worker_in_arrival_order(client, app, pipe, stepper):
    """Reference: fresh sessions of each story alone; order and `queued` as the issue defines them."""
    done = []
    director = app.state.director
    stepper.pause()
    a = new_story(client, caption="Story A.", seed=1)
    b = new_story(client, caption="Story B.", seed=2)
    for sid in (a, b):
        director.subscribe(sid, lambda ev, sid=sid: done.append((sid, ev["shot"]))
                           if isinstance(ev, dict) and ev["type"] == "shot_done" else None)
    add_shot(client, a, "A one.")
    add_shot(client, a, "A two.")
    add_shot(client, b, "B one.")
    wait_until(lambda: story_state(client, a)["busy"])
    sa, sb = story_state(client, a), story_state(client, b)
    assert (sa["busy"], sa["queued"]) == (True, 1)   # its own shot in progress is ahead of "A two"
    assert (sb["busy"], sb["queued"]) == (False, 2)  # "A one" and "A two" are ahead of "B one"
    assert [x["state"] for x in sa["shots"]] == ["generating", "queued"]
    assert_error(client.post(f"/api/stories/{a}/rewind", json={"shots": 0}), 409)
    assert_error(client.post(f"/api/stories/{b}/cut"), 409)
    # A client of story A that goes away stops nothing.
    with client.websocket_connect(f"/api/stories/{a}/live") as ws:
        assert ws.receive_json()["type"] == "state"
        stepper.step()
        while ws.receive().get("text", "").find('"chunk"') < 0:
            pass
    stepper.resume()
    wait_idle(client, a)
    wait_idle(client, b)
    assert done == [(a, 0), (a, 1), (b, 0)]
    ref_a = reference(pipe, "Story A.", 1, ["A one.", "A two."])
    ref_b = reference(pipe, "Story B.", 2, ["B one."])
    np.testing.assert_array_equal(studio_frames(app, a, 1), ref_a[1])
    np.testing.assert_array_equal(studio_frames(app, b, 0), ref_b[0])


def test_failed_shot_reports_an_error_and_the_story_goes_on(client, app, pipe, stepper):
    """Reference: a fresh session given only the shots that succeeded."""
    sid = new_story(client, caption="A failing camera.", seed=4)
    with client.websocket_connect(f"/api/stories/{sid}/live") as ws:
        ws.receive_json()
        stepper.fail_at_chunk = 2
        add_shot(client, sid, "This one breaks.")
        add_shot(client, sid, "This one was queued behind it.")
        while True:
            m = ws.receive()
            ev = json.loads(m["text"]) if m.get("text") else {}
            if ev.get("type") == "error":
                break
    assert ev == {"type": "error", "shot": 0, "error": "shot 0 failed: injected failure"}
    s = wait_idle(client, sid)
    assert s["shots"] == []
    add_shot(client, sid, "A steady shot.")
    wait_idle(client, sid)
    np.testing.assert_array_equal(studio_frames(app, sid, 0), reference(pipe, "A failing camera.", 4, ["A steady shot."])[0])


def test_errors_are_json_with_the_issue_statuses(client, app, pipe):
    """Reference: the statuses listed in the issue (400 malformed / bad input, 404 unknown story, 409 conflict)."""
    e400 = [
        client.post("/api/stories", content=b"{not json"),
        client.post("/api/stories", content=b"[1, 2]"),
        client.post("/api/stories", json={}),
        client.post("/api/stories", json={"global_caption": "   "}),
        client.post("/api/stories", json={"global_caption": 3}),
        client.post("/api/stories", json={"global_caption": "x" * (pipe.text_encoder.text_len + 1)}),
        client.post("/api/stories", json={"global_caption": "ok", "seed": "1"}),
        client.post("/api/stories", json={"global_caption": "ok", "seed": -1}),
        client.post("/api/stories", json={"global_caption": "ok", "seed": 2**40}),
        client.post("/api/stories", json={"global_caption": "ok", "seed": True}),
    ]
    sid = new_story(client, caption="A quiet library.")
    e400 += [
        client.post(f"/api/stories/{sid}/shots", content=b"{"),
        client.post(f"/api/stories/{sid}/shots", json={}),
        client.post(f"/api/stories/{sid}/shots", json={"prompt": ""}),
        client.post(f"/api/stories/{sid}/shots", json={"prompt": ["a"]}),
        client.post(f"/api/stories/{sid}/shots", json={"prompt": "y" * pipe.text_encoder.text_len}),
        client.post(f"/api/stories/{sid}/rewind", content=b"shots=1"),
        client.post(f"/api/stories/{sid}/rewind", json={}),
        client.post(f"/api/stories/{sid}/rewind", json={"shots": 1}),  # no finished shot to keep
        client.post(f"/api/stories/{sid}/rewind", json={"shots": -1}),
        client.post(f"/api/stories/{sid}/rewind", json={"shots": "0"}),
        client.post(f"/api/stories/{sid}/rewind", json={"shots": 0.5}),
        client.post(f"/api/stories/{sid}/rewind", json={"shots": False}),
    ]
    for r in e400:
        assert_error(r, 400)
    assert "too long" in e400[5].json()["error"] and "malformed JSON" in e400[0].json()["error"]
    for r in [client.get("/api/stories/nope"), client.delete("/api/stories/nope"),
              client.post("/api/stories/nope/shots", json={"prompt": "a"}),
              client.post("/api/stories/nope/shots", content=b"{"),
              client.post("/api/stories/nope/cut"), client.post("/api/stories/nope/rewind", json={"shots": 0}),
              client.get("/api/stories/nope/video.mp4"), client.get(f"/api/stories/{sid}/shots/0/thumbnail.jpg"),
              client.get("/api/no/such/route")]:
        assert_error(r, 404)
    assert_error(client.post(f"/api/stories/{sid}/cut"), 409)  # nothing being generated
    assert_error(client.get(f"/api/stories/{sid}/video.mp4"), 409)  # no finished shot yet
    assert_error(client.put("/api/stories"), 405)
    with client.websocket_connect("/api/stories/nope/live") as ws:
        assert ws.receive_json()["type"] == "error"
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_json()
        assert e.value.code == 4404
    # An unexpected failure inside a handler is a JSON 500 with no trace either.
    director = app.state.director
    director.snapshot, original = (lambda sid: 1 / 0), director.snapshot
    try:
        assert_error(client.get(f"/api/stories/{sid}"), 500)
    finally:
        director.snapshot = original
    r = client.delete(f"/api/stories/{sid}")
    assert r.status_code == 200 and r.json() == {"id": sid, "deleted": True}
    assert_error(client.get(f"/api/stories/{sid}"), 404)


def test_rewound_and_deleted_shots_are_freed(client, app, pipe):
    """Reference: Python's own reachability (weak references die once nothing holds a dropped shot)."""
    director = app.state.director
    sid = new_story(client, caption="A long walk.", seed=3)
    for i in range(4):
        add_shot(client, sid, f"Step {i}.")
    wait_idle(client, sid)
    story = director.story(sid)
    dropped = story.shots[1:] + story.session.shots[1:]
    refs = [weakref.ref(x) for x in dropped] + [weakref.ref(c) for s in story.shots[1:] for c in s.chunks]
    del dropped
    client.post(f"/api/stories/{sid}/rewind", json={"shots": 1})
    gc.collect()
    assert len(story.shots) == len(story.session.shots) == 1
    assert all(r() is None for r in refs)
    with client.websocket_connect(f"/api/stories/{sid}/live") as ws:
        ws.receive_json()
        client.delete(f"/api/stories/{sid}")
        assert ws.receive_json() == {"type": "deleted"}
    story_ref, session_ref = weakref.ref(story), weakref.ref(story.session.session)
    del story
    gc.collect()
    assert story_ref() is None and session_ref() is None and sid not in director.stories()


def test_text_encoder_keeps_a_bounded_number_of_prompts(pipe):
    """Reference: least-recently-used eviction written out here (the studio sees a new prompt every shot)."""
    enc = pipe.text_encoder
    prompts = [f"prompt number {i}" for i in range(enc.cache_size + 5)]
    for p in prompts:
        enc.encode(p)
    enc.encode(prompts[-enc.cache_size])  # used again: now the most recent
    enc.encode("one more prompt")
    assert len(enc._cache) == enc.cache_size
    assert list(enc._cache)[-2:] == [prompts[-enc.cache_size], "one more prompt"]
    assert prompts[-enc.cache_size + 1] not in enc._cache and prompts[-1] in enc._cache


def test_cli_errors_are_one_line(tmp_path):
    """Reference: the project's CLI error convention (`prog: error: ...`, exit 1, no traceback)."""
    from .conftest import run_python
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_python("-m", "shotstream_jax.cli.studio", f"--port={port}", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"shotstream-studio: error: cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr
    r = run_python("-m", "shotstream_jax.cli.studio", f"--model={tmp_path}/none", f"--port={port}", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"shotstream-studio: error: {tmp_path}/none/config.json: missing" in r.stderr



def test_a_client_too_far_behind_is_dropped(client, app, stepper, monkeypatch):
    """Reference: the bound on pending events per client; the app's event loop is held while a shot's events pile up."""
    from shotstream_jax.studio import app as app_module
    monkeypatch.setattr(app_module, "MAX_PENDING_EVENTS", 8)
    director = app.state.director
    sid = new_story(client, seed=1)
    held, release = threading.Event(), threading.Event()

    async def hold_the_loop():  # blocks the app's loop on purpose: nothing is sent meanwhile
        held.set()
        release.wait(120)

    with client.websocket_connect(f"/api/stories/{sid}/live") as ws:
        assert ws.receive_json()["type"] == "state"
        stepper.pause()
        add_shot(client, sid, "A burst of frames.")
        client.portal.start_task_soon(hold_the_loop)
        held.wait(60)
        stepper.resume()
        wait_until(lambda: director.story(sid).shots[0].done)  # ~90 events waiting for the loop
        release.set()
        assert story_state(client, sid)["shots"][0]["frames"] == 81  # the story itself goes on
        client.delete(f"/api/stories/{sid}")  # ends the stream (code 1000) were the client not dropped
        messages = []
        while (m := ws.receive())["type"] != "websocket.close":
            messages.append(m)
        assert m["code"] == 1013 and len(messages) <= 8 + 4  # the bound, plus the events before the hold


def test_answers_name_words_the_model_does_not_know():
    """Reference: the Shapes model's vocabulary (the world's caption words, data/shapes.py).

    No lifespan (no `with`): the worker never starts, so nothing is generated; only the answers are read.
    """
    client = TestClient(create_app(ShotStream.load()), raise_server_exceptions=False)
    r = client.post("/api/stories", json={"global_caption": "A story about one character.", "seed": 1})
    assert r.status_code == 201 and r.json()["unknown_words"] == []
    sid = r.json()["id"]
    r = client.post(f"/api/stories/{sid}/shots",
                    json={"prompt": "wide shot of a purple circle moving left on a red background"})
    assert r.status_code == 202 and r.json() == {"index": 0, "unknown_words": ["purple"]}
    r = client.post("/api/stories", json={"global_caption": "A  Sad story about one character"})
    assert r.json()["unknown_words"] == ["Sad"]
    # A shot's words are those of the text the model reads: caption + "shot0:" + prompt. Without a
    # final full stop the caption's last word runs into the shot marker.
    r = client.post(f"/api/stories/{r.json()['id']}/shots",
                    json={"prompt": "wide shot of a red circle moving left on a blue background"})
    assert r.json() == {"index": 0, "unknown_words": ["Sad", "charactershot0"]}
