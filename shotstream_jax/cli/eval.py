"""shotstream-eval: generate a test set of stories and score them.

  shotstream-eval --testset=demo/testdata/testset.csv --model=models/shotstream --out_dir=eval/

--testset is the reference CSV (column json_path -> caption JSON with
global_caption, shot1..N) or a folder of story JSON files. Writes one mp4 per
story and metrics.json (per story and mean): fps, first_frame_latency_s and the
pixel-space metrics of shotstream_jax.eval.pixel (transition control, intra-
and inter-shot consistency). The paper's DINO/CLIP/aesthetic scores need
pretrained networks this package does not ship; they are not reported.
"""
import os
import sys
import time

from absl import app, flags

from shotstream_jax.cli.common import fail

FLAGS = flags.FLAGS
flags.DEFINE_string("testset", None, "Test-set CSV (json_path column) or folder of story JSON files.")
flags.DEFINE_string("model", None, "Model directory (default: the bundled default model).")
flags.DEFINE_string("out_dir", "eval_out", "Where the mp4s and metrics.json go.")
flags.DEFINE_integer("seed", 0, "Random seed for every story.")
flags.DEFINE_integer("limit", 0, "Evaluate only the first N stories (0: all).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")

PROG = "shotstream-eval"


def evaluate_story(pipe, story, out_path, seed):
    from shotstream_jax.eval import pixel as evaluation
    from shotstream_jax.video_io import VideoWriter
    import numpy as np
    session = pipe.session(story.global_caption, seed=seed)
    frames, lengths, first = [], [], None
    start = time.perf_counter()
    with VideoWriter(out_path, fps=pipe.fps) as writer:
        for prompt in story.shots:
            n = 0
            for chunk in session.next_shot(prompt):
                if first is None:
                    first = time.perf_counter() - start
                writer.write(chunk)
                frames.append(chunk)
                n += len(chunk)
            lengths.append(n)
    seconds = time.perf_counter() - start
    video = np.concatenate(frames)
    return {"frames": len(video), "shots": len(lengths), "seconds": seconds, "fps": len(video) / seconds,
            "first_frame_latency_s": first, **evaluation.video_metrics(video, lengths)}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.testset:
        raise app.UsageError("--testset is required")
    from tqdm import tqdm

    from shotstream_jax.eval import pixel as evaluation
    from shotstream_jax.pipeline import ShotStream
    from shotstream_jax.story import StoryError, load_story
    try:
        paths = evaluation.read_testset(FLAGS.testset)
        if FLAGS.limit:
            paths = paths[:FLAGS.limit]
        stories = [(p, load_story(p)) for p in paths]  # every file checked before any generation
        os.makedirs(FLAGS.out_dir, exist_ok=True)
        pipe = ShotStream.load(FLAGS.model)
        results = {}
        for path, story in tqdm(stories, desc="stories", disable=not FLAGS.progress, file=sys.stderr):
            name = os.path.splitext(os.path.basename(path))[0]
            results[name] = evaluate_story(pipe, story, os.path.join(FLAGS.out_dir, name + ".mp4"), FLAGS.seed)
            print(f"{name}: " + ", ".join(f"{k}={v:.3f}" for k, v in results[name].items()
                                          if isinstance(v, float)), flush=True)
        report = {"model": FLAGS.model or "default (toy, random weights)", "stories": results,
                  "mean": evaluation.summarize(list(results.values()))}
        evaluation.write_json_atomic(os.path.join(FLAGS.out_dir, "metrics.json"), report)
    except (StoryError, ValueError, OSError) as e:
        return fail(PROG, str(e))
    print(f"wrote {os.path.join(FLAGS.out_dir, 'metrics.json')} ({len(results)} stories)")
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
