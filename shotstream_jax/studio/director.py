"""The director: stories, one queue of shots for all of them, and the worker thread that generates them.

Everything here is plain Python and threads; the web app (`app.py`) only
translates HTTP and WebSocket traffic into these calls. One worker thread
owns the model: it takes shots from the queue in arrival order (whatever
story they belong to), runs `Session.next_shot` chunk by chunk, and hands
every event to the story's listeners, which must not block (the app's
listeners hop onto the event loop with `call_soon_threadsafe`).

A story keeps exactly what it can still show or continue from: its session
(the decoded shots the next shot's context is sampled from) and the uint8
frames of its shots. Rewinding drops the later shots from both; deleting a
story drops everything.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import logging
import secrets
import threading
import time
from typing import Any, Callable, Optional, Union

import numpy as np

from shotstream_jax.text import clean_prompt, shot_prompt

log = logging.getLogger(__name__)

Event = Union[dict, bytes]  # a JSON event, or one JPEG frame (sent right after its `chunk` event)
MAX_SEED = 2**32 - 1


class StudioError(Exception):
    """A request the studio refuses: `status` is the HTTP status, the message is for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(eq=False)
class Shot:
    index: int
    prompt: str                         # the user's shot prompt (the model sees shot_prompt(...) of it)
    state: str = "queued"               # queued -> generating -> done | cut
    chunks: list[np.ndarray] = dataclasses.field(default_factory=list)  # uint8 [n, H, W, 3] each

    @property
    def frames(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def done(self) -> bool:
        return self.state in ("done", "cut")


@dataclasses.dataclass(eq=False)
class Story:
    id: str
    global_caption: str
    seed: int
    session: Any                        # shotstream_jax.pipeline.Session
    shots: list[Shot] = dataclasses.field(default_factory=list)
    listeners: set[Callable[[Event], None]] = dataclasses.field(default_factory=set)
    stop_requested: bool = False        # cut, delete or shutdown: end the shot after the current chunk
    deleted: bool = False


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Director:
    """Stories and the one worker that generates their shots. Thread-safe; all methods return at once."""

    def __init__(self, pipe):
        self.pipe = pipe
        self._stories: dict[str, Story] = {}
        self._queue: collections.deque[tuple[Story, Shot]] = collections.deque()
        self._active: Optional[tuple[Story, Shot]] = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    # -- life cycle

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="shotstream-studio-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the chunk in progress and stop the worker."""
        with self._lock:
            self._stopping = True
            if self._active:
                self._active[0].stop_requested = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- requests

    def info(self) -> dict:
        p = self.pipe
        return {"height": p.height, "width": p.width, "fps": p.fps, "chunks_per_shot": p.chunks_per_shot,
                "max_prompt_tokens": p.text_encoder.text_len}

    def create_story(self, global_caption, seed=None) -> Story:
        global_caption = self._check_text(global_caption, "global_caption")
        self._check_length("global_caption", global_caption, 0)
        if seed is None:
            seed = secrets.randbelow(MAX_SEED + 1)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise StudioError(400, f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
        story = Story(secrets.token_hex(6), global_caption, seed, self.pipe.session(global_caption, seed=seed))
        with self._lock:
            self._stories[story.id] = story
        return story

    def story(self, story_id: str) -> Story:
        with self._lock:
            return self._get(story_id)

    def snapshot(self, story_id: str) -> dict:
        with self._lock:
            return self._snapshot(self._get(story_id))

    def add_shot(self, story_id: str, prompt) -> tuple[int, list[str]]:
        """Queue a shot; returns its index and the words of the text the model reads for it (global
        caption + "shot{i}:" + prompt) that its vocabulary lacks."""
        with self._lock:
            story = self._get(story_id)
            index = len(story.shots)
        prompt = self._check_text(prompt, "prompt")
        self._check_length("prompt", story.global_caption, index, prompt)
        with self._lock:
            if story.deleted:
                raise StudioError(404, f"no story {story_id!r}")
            shot = Shot(len(story.shots), prompt)
            story.shots.append(shot)
            self._queue.append((story, shot))
            self._wake.notify()
        self._broadcast_state()
        return shot.index, self.unknown_words(shot_prompt(story.global_caption, shot.index, prompt))

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` the model's vocabulary lacks (it reads each as an unknown word)."""
        return self.pipe.text_encoder.tokenizer.unknown_words(clean_prompt(text))

    def cut(self, story_id: str) -> int:
        """Ask the shot in progress to end after its current chunk; returns its index."""
        with self._lock:
            story = self._get(story_id)
            if not self._active or self._active[0] is not story:
                raise StudioError(409, "no shot of this story is being generated; nothing to cut")
            story.stop_requested = True
            return self._active[1].index

    def rewind(self, story_id: str, shots) -> None:
        """Keep the first `shots` finished shots; drop the rest and every queued prompt."""
        with self._lock:
            story = self._get(story_id)
            if self._active and self._active[0] is story:
                raise StudioError(409, f"shot {self._active[1].index} is being generated; "
                                       "cut it (or wait for it to finish) before rewinding")
            finished = sum(s.done for s in story.shots)
            if isinstance(shots, bool) or not isinstance(shots, int) or not 0 <= shots <= finished:
                raise StudioError(400, f"'shots' must be an integer from 0 to {finished} "
                                       f"(the finished shots to keep), got {shots!r}")
            self._drop_queued(story)
            del story.shots[shots:]
            story.session.truncate(shots)
        self._publish(story, {"type": "rewound", "shots": shots})
        self._broadcast_state()

    def delete(self, story_id: str) -> None:
        """Forget a story; a shot of it in progress stops after its current chunk."""
        with self._lock:
            story = self._stories.pop(story_id, None)
            if story is None:
                raise StudioError(404, f"no story {story_id!r}")
            story.deleted = story.stop_requested = True
            self._drop_queued(story)
            listeners = list(story.listeners)
        for listener in listeners:
            listener({"type": "deleted"})
        self._broadcast_state()

    def finished_frames(self, story_id: str) -> np.ndarray:
        """uint8 [T, H, W, 3]: every finished shot, in order."""
        with self._lock:
            story = self._get(story_id)
            chunks = [c for s in story.shots if s.done for c in s.chunks]
        if not chunks:
            raise StudioError(409, "the story has no finished shot yet")
        return np.concatenate(chunks)

    def thumbnail(self, story_id: str, index: int) -> bytes:
        """JPEG of the middle frame of a shot (the latest frame of one still being generated)."""
        with self._lock:
            story = self._get(story_id)
            if not 0 <= index < len(story.shots) or not story.shots[index].chunks:
                raise StudioError(404, f"story {story_id!r} has no frames of a shot {index}")
            shot = story.shots[index]
            frames = np.concatenate(shot.chunks)
        return jpeg(frames[len(frames) // 2 if shot.done else -1])

    def subscribe(self, story_id: str, listener: Callable[[Event], None]) -> dict:
        """Register a listener of the story's events; returns the story's state at that moment."""
        with self._lock:
            story = self._get(story_id)
            story.listeners.add(listener)
            return self._snapshot(story)

    def unsubscribe(self, story_id: str, listener: Callable[[Event], None]) -> None:
        with self._lock:
            story = self._stories.get(story_id)
            if story is not None:
                story.listeners.discard(listener)

    def stories(self) -> list[str]:
        with self._lock:
            return list(self._stories)

    # -- the worker

    def _work(self) -> None:
        while self._run_next():
            pass

    def _run_next(self) -> bool:
        """Wait for a shot and generate it; False when the studio stops.

        A function of its own so that no frame of the worker holds a finished
        shot (or its story) while waiting for the next one.
        """
        with self._lock:
            while not self._queue and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return False
            story, shot = self._queue.popleft()
            self._active = (story, shot)
            shot.state = "generating"
            story.stop_requested = False
        self._broadcast_state()
        try:
            self._generate(story, shot)
        finally:
            with self._lock:
                self._active = None
            self._broadcast_state()
        return True

    def _generate(self, story: Story, shot: Shot) -> None:
        chunks_per_shot = self.pipe.chunks_per_shot
        self._publish(story, {"type": "shot_start", "shot": shot.index, "prompt": shot.prompt,
                              "chunks": chunks_per_shot})
        start = time.perf_counter()
        frames_made = 0
        gen = story.session.next_shot(shot.prompt)
        try:
            for c, frames in enumerate(gen):
                frames_made += len(frames)
                encoded = [jpeg(f) for f in frames] if story.listeners else []
                with self._lock:
                    shot.chunks.append(frames)
                    stop = story.stop_requested
                self._publish(story, {"type": "chunk", "shot": shot.index, "chunk": c, "chunks": chunks_per_shot,
                                      "frames": len(frames), "fps": frames_made / (time.perf_counter() - start)})
                for b in encoded:
                    self._publish(story, b)
                if stop:
                    break
            gen.close()  # after a cut: the session keeps the chunks made so far as the shot
        except Exception as e:  # the story cannot continue from a shot that failed half-way
            log.exception("story %s: shot %d failed", story.id, shot.index)
            gen.close()
            story.session.truncate(shot.index)
            with self._lock:
                self._drop_queued(story)
                del story.shots[shot.index:]
            message = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            self._publish(story, {"type": "error", "shot": shot.index,
                                  "error": f"shot {shot.index} failed: {message}"})
            return
        with self._lock:
            shot.state = "done" if len(shot.chunks) == chunks_per_shot else "cut"
        self._publish(story, {"type": "shot_done", "shot": shot.index, "frames": shot.frames,
                              "cut": shot.state == "cut",
                              "fps": frames_made / (time.perf_counter() - start)})

    # -- helpers (the `_get`, `_snapshot` and `_drop_queued` callers hold the lock)

    def _check_text(self, text, what: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise StudioError(400, f"'{what}' must be a non-empty string")
        return text.strip()

    def _check_length(self, what: str, global_caption: str, index: int, prompt: str = "") -> None:
        """The model reads global caption + "shot{i}:" + prompt, at most text_len tokens of it."""
        enc = self.pipe.text_encoder
        n = len(enc.tokenizer(clean_prompt(shot_prompt(global_caption, index, prompt))))
        if n > enc.text_len:
            raise StudioError(400, f"'{what}' is too long: the model reads at most {enc.text_len} tokens of "
                                   f"global caption + shot prompt, this makes {n}")

    def _get(self, story_id: str) -> Story:
        story = self._stories.get(story_id)
        if story is None:
            raise StudioError(404, f"no story {story_id!r}")
        return story

    def _snapshot(self, story: Story) -> dict:
        queued = 0
        waiting = [i for i, (s, _) in enumerate(self._queue) if s is story]
        if waiting:  # shots of any story ahead of this story's next one, the one in progress included
            queued = waiting[0] + (self._active is not None)
        return {"id": story.id, "global_caption": story.global_caption, "seed": story.seed,
                "busy": self._active is not None and self._active[0] is story, "queued": queued,
                "shots": [{"index": s.index, "prompt": s.prompt, "frames": s.frames, "done": s.done,
                           "state": s.state} for s in story.shots]}

    def _drop_queued(self, story: Story) -> None:
        self._queue = collections.deque(job for job in self._queue if job[0] is not story)
        story.shots[:] = [s for s in story.shots if s.state != "queued"]

    def _publish(self, story: Story, event: Event) -> None:
        with self._lock:
            listeners = list(story.listeners)
        for listener in listeners:
            listener(event)

    def _broadcast_state(self) -> None:
        """Every listened-to story gets its state: a shot starting or ending moves everyone's queue."""
        with self._lock:
            states = [(list(s.listeners), self._snapshot(s)) for s in self._stories.values() if s.listeners]
        for listeners, state in states:
            for listener in listeners:
                listener({"type": "state", "story": state})
