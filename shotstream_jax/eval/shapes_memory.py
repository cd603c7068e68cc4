"""The context-swap probe: does a Shapes teacher take its character from the context?

    python -m shotstream_jax.eval.shapes_memory --teacher=RUN/teacher/export --encoder_dir=MODEL_DIR \
        --latents=RUN/latents [--examples=48] [--steps=20] [--guidance=1] [--output=probe.json]

The held-out score (`eval.shapes --teacher`, with and without --no_global_context) builds each shot's
context from the teacher's own earlier shots. This probe takes it from the training data, so it asks
only whether the teacher reads it. For up to --examples pre-encoded examples whose target is a
`the same character` shot (the character is in the context frames, not in the target's prompt), the
teacher samples the target twice from the same noise: with the example's own context, and with the
context frames and earlier prompts of a partner example whose character has another colour. The
character colours read from the decoded samples and from the two decoded ground-truth targets
(`eval.shapes.read_shot`) give
  own         the sample with its own context shows its own character's colour;
  swap_keeps  the sample with the partner's context still shows its own colour;
  swap_takes  it shows the partner's colour;
  drawn       the sample with its own context shows a character at all;
  cut         the sample with its own context starts on its own background: its first frame's background
              is the ground-truth target's.
A teacher that reads its context has `own` and `swap_takes` near 1, `swap_keeps` near 0 and `cut` near 1.
One that draws the colour from its noise has `swap_keeps` near `own` and `swap_takes` at chance. One that
copies its last context frame into the target wholesale also scores high `own` and `swap_takes`, but its
`cut` falls to the share of examples whose last context frame already has the target's background: that
is a shortcut, not memory (the copy curriculum's teacher, benchmarks/RESULTS.md).

--copy_frame gives every example the context of the teacher stage's train.copy_frame curriculum (its
last context frame is its target's own first latent frame): `own` is then a trivial copy, which a
teacher that has learned to copy from its context gets right. --cue_level=L gives every example its cue
frame of level L (data/shapes_cues.py: the target's character on the context shot's background): a teacher
that takes the character from it, and not the whole frame, scores high `own` and `cut` together.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from shotstream_jax.data import shapes
from shotstream_jax.eval import shapes as eval_shapes

SAME = "the same character"


def same_character_examples(latents_dir: str) -> list[int]:
    """Indices of a pre-encoded world's examples (`data.preencode`) whose target is a `the same character` shot."""
    from shotstream_jax.data import preencode
    return [i for i, c in enumerate(preencode.manifest_clips(latents_dir)) if SAME in c.prompts[-1]]


def swap_context(ex: dict, other: dict) -> dict:
    """`ex`'s target shot and prompt after `other`'s earlier shots: other's context frames, their RoPE
    shots and every earlier prompt of other's story; ex's target (its length) and target prompt."""
    text = np.array(other["text"])
    text[other["target_shot"]] = ex["text"][ex["target_shot"]]
    return dict(ex, context=other["context"], context_shot=other["context_shot"], text=text,
                target_shot=other["target_shot"])


def _read(decode: Callable, latents) -> tuple[Optional[str], Optional[str]]:
    """The character colour of the decoded shot and the background of its first frame (None: unreadable)."""
    from shotstream_jax.pipeline import to_uint8
    shot = eval_shapes.read_shot(np.asarray(to_uint8(decode(latents))))
    first = shot["frames"][0].background
    return shot["character_colour"], shapes.COLOURS[first] if first != eval_shapes.NONE else None


def swap_probe(examples: Sequence[dict], sample: Callable, decode: Callable, key) -> dict:
    """The probe over `examples` (pre-encoded example dicts, all `the same character` targets).

    sample(ex, key) -> x0 latents of ex's target; decode(latents) -> [-1, 1] frames [F, H, W, 3].
    An example whose ground truth shows no character colour, or with no partner of another colour,
    is left out (counted in `skipped`). Returns {own, swap_keeps, swap_takes, drawn, cut, n, skipped}.
    """
    import jax
    reads = [_read(decode, ex["target"]) for ex in examples]
    truth = [colour for colour, _ in reads]
    usable = [i for i, t in enumerate(truth) if t is not None]
    own, keeps, takes, drawn, cut = [], [], [], [], []
    for n, i in enumerate(usable):
        partner = next((j for j in usable[n + 1:] + usable[:n] if truth[j] != truth[i]), None)
        if partner is None:
            continue
        k = jax.random.fold_in(key, i)
        with_own, first = _read(decode, sample(examples[i], k))
        swapped, _ = _read(decode, sample(swap_context(examples[i], examples[partner]), k))
        own.append(with_own == truth[i])
        drawn.append(with_own is not None)
        cut.append(first == reads[i][1])
        keeps.append(swapped == truth[i])
        takes.append(swapped == truth[partner])
    if not own:
        raise ValueError(f"no usable pair among {len(examples)} examples: the probe needs at least two "
                         f"`{SAME}` targets whose characters have different colours")
    return dict(own=float(np.mean(own)), swap_keeps=float(np.mean(keeps)), swap_takes=float(np.mean(takes)),
                drawn=float(np.mean(drawn)), cut=float(np.mean(cut)), n=len(own), skipped=len(examples) - len(own))


def main(argv):
    del argv
    import jax
    from absl import app, flags
    from tqdm import tqdm
    from shotstream_jax.config import get_config
    from shotstream_jax.data import pipeline
    from shotstream_jax.train import stages
    f = flags.FLAGS
    try:
        picks = same_character_examples(f.latents)[:f.examples]
    except ValueError as e:
        raise app.UsageError(str(e))
    cfg = get_config("shapes", "ode_pairs")
    cfg.train.update(teacher_dir=f.teacher, ode_steps=f.steps, ode_guidance=f.guidance)
    cfg.data.update(encoder_dir=f.encoder_dir, latents_dir=f.latents)
    _, sample, decode, _, _ = eval_shapes.load_teacher(cfg)
    source = pipeline.PreencodedSource(f.latents)
    examples = [source[i] for i in tqdm(picks, desc="examples", unit="example")]
    try:
        if f.copy_frame:
            examples = [jax.tree.map(np.asarray, stages.copy_frame(ex, jax.random.PRNGKey(0), 1.0)) for ex in examples]
        if f.cue_level >= 0:
            examples = [jax.tree.map(np.asarray, stages.cue_frame(ex, jax.random.PRNGKey(0), 1.0, f.cue_level))
                        for ex in examples]
    except ValueError as e:
        raise app.UsageError(f"--cue_level={f.cue_level}: {f.latents}: {e}")
    progress = tqdm(total=2 * len(examples), desc="teacher samples", unit="sample")

    def counted(ex, key):
        progress.update()
        return sample(ex, key)

    try:
        out = swap_probe(examples, counted, decode, jax.random.PRNGKey(f.seed))
    except ValueError as e:
        raise app.UsageError(f"{f.latents}: {e}")
    progress.close()
    out.update(teacher=f.teacher, steps=f.steps, guidance=f.guidance, seed=f.seed, copy_frame=f.copy_frame,
               cue_level=f.cue_level)
    for m in ("own", "swap_keeps", "swap_takes", "drawn", "cut"):
        print(f"{m:12s} {out[m]:.3f}  (n={out['n']})")
    if f.output:
        eval_shapes.save_metrics(f.output, out)


if __name__ == "__main__":
    from absl import app, flags
    flags.DEFINE_string("teacher", None, "A teacher stage's export/.")
    flags.DEFINE_string("encoder_dir", None, "The model directory of the VAE and text encoder the latents were "
                        "encoded with (e.g. shotstream_jax/assets/default_model).")
    flags.DEFINE_string("latents", None, "A pre-encoded world (python -m shotstream_jax.data.preencode).")
    flags.DEFINE_integer("examples", 48, "Probe the first N `the same character` examples.")
    flags.DEFINE_integer("steps", 20, "Euler steps per sample.")
    flags.DEFINE_float("guidance", 1.0, "CFG scale (1: the conditional velocity alone).")
    flags.DEFINE_integer("seed", 0, "Noise seed (each example's noise is the same with both contexts).")
    flags.DEFINE_bool("copy_frame", False, "Every example's last context frame is its target's own first latent "
                      "frame (the teacher stage's train.copy_frame curriculum).")
    flags.DEFINE_integer("cue_level", -1, "Every example's last context frame is its cue frame of this level "
                         "(data/shapes_cues.py; the teacher stage's train.cue_frame curriculum); -1: not.")
    flags.DEFINE_string("output", "", "Also write the figures as JSON here.")
    flags.mark_flags_as_required(["teacher", "encoder_dir", "latents"])
    app.run(main)
