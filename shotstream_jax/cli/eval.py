"""shotstream-eval: score multi-shot videos with the paper's Table 1 metrics, or generate a test set and score it.

Scoring videos already made (by this package or any other model):

  shotstream-eval --videos=DIR_OR_FILE --story=FILE.json --json=OUT.json \\
      [--clip=DIR] [--dino=DIR] [--aesthetic=FILE]

--story is the story the videos tell (one file for all) or a folder holding
<video name>.json per video. Shots are equally long unless the story file has
"shot_frames": [n1, n2, ...]. --clip is a transformers CLIPModel directory
(with tokenizer.json; ViT-L/14 for the aesthetic head), --dino a transformers
Dinov2Model directory, --aesthetic the LAION aesthetic predictor head (.pth,
.safetensors or .npz). Writes OUT.json (per video, mean, what was not computed,
skipped videos), OUT.md (a table shaped like the paper's Table 1) and OUT.png
(per-shot consistency, text alignment and motion). Metrics whose extractor is
not given are reported as not computed; transition control and dynamic degree
need none. Unreadable videos are reported and skipped. Definitions: docs/evaluation.md.

Generating a test set with a model and scoring it (speed and pixel metrics):

  shotstream-eval --testset=demo/testdata/testset.csv --model=models/shotstream --out_dir=eval/

--testset is the reference CSV (column json_path -> caption JSON with
global_caption, shot1..N) or a folder of story JSON files. Writes one mp4 per
story and metrics.json (per story and mean): fps, first_frame_latency_s and the
pixel-space metrics of shotstream_jax.eval.pixel (transition control, intra-
and inter-shot consistency).
"""
import os
import sys
import time
import warnings

from absl import app, flags

from shotstream_jax.cli import common
from shotstream_jax.cli.common import fail

FLAGS = flags.FLAGS
flags.DEFINE_string("videos", None, "Video file, or folder of videos (*.mp4, *.mov, *.avi, *.mkv, *.webm), to score.")
flags.DEFINE_string("story", None, "Story JSON of the videos, or a folder of <video name>.json (with --videos).")
flags.DEFINE_string("json", None, "Where the scores go (with --videos); the table and plot go beside it "
                                  "(.md, .png).")
flags.DEFINE_string("clip", None, "transformers CLIPModel directory (with tokenizer.json).")
flags.DEFINE_string("dino", None, "transformers Dinov2Model directory.")
flags.DEFINE_string("aesthetic", None, "LAION aesthetic predictor head (.pth, .safetensors or .npz); needs --clip.")
flags.DEFINE_string("testset", None, "Test-set CSV (json_path column) or folder of story JSON files.")
flags.DEFINE_string("model", None, "Model directory (default: the bundled default model).")
flags.DEFINE_string("out_dir", "eval_out", "Where the mp4s and metrics.json go (with --testset).")
flags.DEFINE_integer("seed", 0, "Random seed for every story.")
flags.DEFINE_integer("limit", 0, "Evaluate only the first N stories or videos (0: all).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
common.define_compilation_cache_flag()  # used by --testset

PROG = "shotstream-eval"
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")


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


def run_testset():
    from tqdm import tqdm

    from shotstream_jax.eval import pixel as evaluation
    from shotstream_jax.pipeline import ShotStream
    from shotstream_jax.story import load_story
    paths = evaluation.read_testset(FLAGS.testset)
    if FLAGS.limit:
        paths = paths[:FLAGS.limit]
    stories = [(p, load_story(p)) for p in paths]  # every file checked before any generation
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    common.use_compilation_cache(common.user_cache_dir())
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
    print(f"wrote {os.path.join(FLAGS.out_dir, 'metrics.json')} ({len(results)} stories)")


def list_videos(path: str) -> list[str]:
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(VIDEO_SUFFIXES))
        if not names:
            raise ValueError(f"{path}: no videos in this folder (looked for {', '.join(VIDEO_SUFFIXES)})")
        return [os.path.join(path, n) for n in names]
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such video file or folder")
    return [path]


def load_extractors():
    from shotstream_jax.eval.features import AestheticHead, CLIPFeatures, DINOFeatures
    from shotstream_jax.eval.table1 import Extractors
    if FLAGS.aesthetic and not FLAGS.clip:
        raise app.UsageError("--aesthetic scores CLIP image embeddings: give --clip too")
    ex = Extractors(clip=CLIPFeatures.load(FLAGS.clip) if FLAGS.clip else None,
                    dino=DINOFeatures.load(FLAGS.dino) if FLAGS.dino else None,
                    aesthetic=AestheticHead.load(FLAGS.aesthetic) if FLAGS.aesthetic else None)
    if ex.aesthetic is not None:
        ex.aesthetic.check(ex.clip, FLAGS.aesthetic)
    return ex


def run_videos():
    from tqdm import tqdm

    from shotstream_jax.eval import report, table1
    from shotstream_jax.eval.pixel import write_json_atomic
    from shotstream_jax.story import StoryError
    from shotstream_jax.video_io import read_video
    videos = list_videos(FLAGS.videos)
    if FLAGS.limit:
        videos = videos[:FLAGS.limit]
    if not os.path.isdir(FLAGS.story):
        table1.story_for(videos[0], FLAGS.story)  # a broken story file fails before any model loads
    out_dir = os.path.dirname(os.path.abspath(FLAGS.json))
    if not os.path.isdir(out_dir):
        raise ValueError(f"{FLAGS.json}: the folder {out_dir} does not exist")
    ex = load_extractors()
    results, skipped = {}, {}
    for path in tqdm(videos, desc="videos", disable=not FLAGS.progress, file=sys.stderr):
        name = os.path.basename(path)
        try:
            captions, given, story_file = table1.story_for(path, FLAGS.story)
        except StoryError as e:
            skipped[name] = str(e)
        else:
            try:
                frames, fps = read_video(path)
            except Exception as e:  # imageio/ffmpeg raise many types for a broken file
                skipped[name] = f"{path}: unreadable video ({type(e).__name__}: {e})"
            else:
                try:
                    lengths = table1.shot_lengths(len(frames), len(captions), given, story_file)
                    results[name] = {"frames": len(frames), "fps": fps, "shot_lengths": lengths,
                                     **table1.score_video(frames, fps, lengths, captions, ex)}
                except ValueError as e:
                    skipped[name] = f"{path}: {e}"
        if name in skipped:
            print(f"{PROG}: skipped {skipped[name]}", file=sys.stderr, flush=True)
    if not results:
        raise ValueError(f"no video could be scored ({len(skipped)} skipped; see the messages above)")
    not_computed = {k: ex.missing(needs) for k, _, needs in table1.METRICS if not ex.has(needs)}
    mean = table1.aggregate(list(results.values()))
    base = os.path.splitext(FLAGS.json)[0]
    out = {"videos": results, "mean": mean, "not_computed": not_computed, "skipped": skipped,
           "extractors": {"clip": FLAGS.clip, "dino": FLAGS.dino, "aesthetic": FLAGS.aesthetic},
           "table": base + ".md", "plot": base + ".png"}
    table = report.markdown_table(results, mean, not_computed)
    report.plot(results, base + ".png")
    report.write_text(base + ".md", table)
    write_json_atomic(FLAGS.json, out)
    print(table)
    print(f"wrote {FLAGS.json}, {base}.md, {base}.png ({len(results)} videos scored, {len(skipped)} skipped)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if bool(FLAGS.videos) == bool(FLAGS.testset):
        raise app.UsageError("give --videos (score videos) or --testset (generate and score), not both")
    if FLAGS.videos and not (FLAGS.story and FLAGS.json):
        raise app.UsageError("--videos needs --story=FILE.json and --json=OUT.json")
    from shotstream_jax.convert.io import CheckpointError
    from shotstream_jax.story import StoryError
    # imageio starts ffmpeg with subprocess: no JAX work runs in the child, so fork is safe here
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
    try:
        run_videos() if FLAGS.videos else run_testset()
    except (StoryError, CheckpointError, ValueError, OSError) as e:
        return fail(PROG, str(e))
    return 0


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
