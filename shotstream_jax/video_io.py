"""Writing videos: H.264 mp4 (yuv420p, plays in ordinary players), written atomically.

Frames arrive chunk by chunk while the story streams; they go to a temporary
file beside the destination, renamed into place only when the video is
complete. An error or interruption leaves no partial output.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np


class VideoWriter:
    """`with VideoWriter(path, fps) as w: w.write(frames_uint8[n, H, W, 3])`."""

    def __init__(self, path: str, fps: int = 16):
        self.path = os.path.abspath(path)
        self.fps = fps
        self.frames_written = 0
        self._writer = None
        self._tmp = None

    def __enter__(self):
        d = os.path.dirname(self.path)
        if os.path.isdir(self.path):
            raise OSError(f"{self.path}: is a directory; give a file name such as story.mp4")
        if not os.path.isdir(d):
            raise OSError(f"{self.path}: the folder {d} does not exist")
        if not os.access(d, os.W_OK):
            raise OSError(f"{self.path}: cannot write to folder {d} (permission denied)")
        fd, self._tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".mp4", dir=d)
        os.close(fd)
        return self

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [n, H, W, 3], got {frames.dtype} {frames.shape}")
        if self._writer is None:
            import imageio.v2 as imageio
            # macro_block_size=1 keeps odd sizes exact; libx264 + yuv420p is what players expect.
            self._writer = imageio.get_writer(
                self._tmp, format="FFMPEG", mode="I", fps=self.fps, codec="libx264",
                pixelformat="yuv420p", macro_block_size=1, quality=8,
                ffmpeg_log_level="error")
        for f in frames:
            self._writer.append_data(f)
        self.frames_written += len(frames)

    def __exit__(self, exc_type, exc, tb):
        try:
            if self._writer is not None:
                self._writer.close()
            if exc_type is None:
                if self.frames_written == 0:
                    raise ValueError(f"{self.path}: no frames to write")
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp and os.path.exists(self._tmp):
                os.remove(self._tmp)
        return False


def read_video(path: str) -> tuple[np.ndarray, float]:
    """All frames uint8 [T, H, W, 3] and the fps of a video file."""
    import imageio.v2 as imageio
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        fps = float(reader.get_meta_data().get("fps", 0.0))
        frames = np.stack([np.asarray(f) for f in reader])
    finally:
        reader.close()
    return frames, fps
