"""shotstream-generate: a multi-shot story -> one mp4, streamed shot by shot, chunk by chunk.

From a story file:
  shotstream-generate --story=examples/story.json --out=story.mp4
Interactively (one shot prompt per line; an empty line or EOF ends the story):
  shotstream-generate --interactive --global_caption="A rainy night city." --out=story.mp4

Story files are {"global_caption": ..., "shots": [...]} or the reference caption
format {"global_caption": ..., "shot1": ..., "shot2": ...}. Without --model the
bundled default model is used.
"""
from __future__ import annotations

import sys
import time

from absl import app, flags

from shotstream_jax.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("story", None, "Story JSON file (see --helpfull for the format).")
flags.DEFINE_bool("interactive", False, "Read shot prompts from stdin, one per line, generating each "
                  "shot as soon as its line arrives.")
flags.DEFINE_string("global_caption", None, "Global caption for --interactive (default: the first line read).")
flags.DEFINE_string("out", "story.mp4", "Output mp4 (16 fps H.264; written atomically).")
flags.DEFINE_string("model", None, "Model directory (default: the bundled default model).")
flags.DEFINE_integer("seed", 0, "Random seed; the same seed and prompts give the same video.")
flags.DEFINE_bool("progress", True, "Show a progress bar per shot.")
common.define_compilation_cache_flag()

PROG = "shotstream-generate"


def _interactive_prompts(stream):
    """Yields stripped lines until an empty line or EOF."""
    tty = stream.isatty()
    while True:
        if tty:
            print("next shot> ", end="", file=sys.stderr, flush=True)
        line = stream.readline()
        if not line or not line.strip():
            return
        yield line.strip()


def generate(pipe, global_caption, prompts, writer, seed, progress=True):
    """Stream every shot into `writer` (a VideoWriter); returns seconds spent."""
    from tqdm import tqdm
    session = pipe.session(global_caption, seed=seed)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts, 1):
        with tqdm(total=pipe.chunks_per_shot, desc=f"shot {i}", unit="chunk",
                  disable=not progress, file=sys.stderr) as bar:
            for frames in session.next_shot(prompt):
                writer.write(frames)
                bar.update(1)
    return time.perf_counter() - start


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    common.quiet_logs()
    common.plain_warnings(PROG)
    common.use_compilation_cache(common.user_cache_dir())
    from shotstream_jax.pipeline import ShotStream
    from shotstream_jax.story import StoryError, check_prompt, load_story
    from shotstream_jax.video_io import VideoWriter
    if bool(FLAGS.story) == FLAGS.interactive:
        raise app.UsageError("give exactly one of --story=FILE or --interactive")
    try:
        if FLAGS.story:
            story = load_story(FLAGS.story)
            global_caption, prompts = story.global_caption, story.shots
        else:
            prompts = _interactive_prompts(sys.stdin)
            global_caption = FLAGS.global_caption
            if global_caption is None:
                if sys.stdin.isatty():
                    print("global caption> ", end="", file=sys.stderr, flush=True)
                global_caption = sys.stdin.readline()
            global_caption = check_prompt(global_caption, "global caption")
        # Open the output first: an unwritable path fails before minutes of model loading.
        with VideoWriter(FLAGS.out, fps=16) as writer:
            pipe = ShotStream.load(FLAGS.model)
            writer.fps = pipe.fps
            seconds = generate(pipe, global_caption, prompts, writer, FLAGS.seed, FLAGS.progress)
        frames = writer.frames_written
    except (StoryError, ValueError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output written", file=sys.stderr)
        return 130
    print(f"wrote {FLAGS.out}: {frames} frames in {seconds:.1f} s ({frames / seconds:.2f} FPS)")
    return 0


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
