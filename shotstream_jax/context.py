"""Next-shot context: which history frames condition a shot, and their RoPE bookkeeping.

Follows the public ShotStream code (`pipeline/causal_inference_ar.py`,
`trainer/wan_frameconcat.py`, `Teacher_Ode_Sample.py`, `dynamic_sample_frames`):
  * With S_hist history shots and a budget of f_context frames, each shot gets
    floor(f_context / S_hist) frames and the remainder is spread ONE frame each
    over the most recent `remainder` shots (`counts[-i] += 1`). With more shots
    than budget the oldest S_hist - f_context shots get no frame.
  * Inside a shot the frames are round(linspace(first, last, count)) over the
    frame indices of the concatenated history video (torch rounds half to even,
    so the global offset matters; we reproduce it).
  * RoPE: context frames sit at temporal positions 0..n_ctx-1 with shot index
    = their source shot; target frames at n_ctx.. restarting every shot, with
    shot index = last context shot index + 1. The first shot has no history:
    the original feeds n_ctx all-zero context latents with shot index 0 (the
    target is then in shot 1); `shot_layout(context_shots=[])` gives those
    positions, and the student may instead mask that context out.
  * Multi-caption: a frame cross-attends to the prompt of the shot it comes
    from; target frames to the current shot's prompt.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from shotstream_jax.schedule import linspace_f32


def context_counts(num_history: int, budget: int = 6) -> list[int]:
    """Frames taken from each of `num_history` shots (oldest first)."""
    if num_history <= 0:
        return []
    base, rem = divmod(budget, num_history)
    counts = [base] * num_history
    for i in range(1, rem + 1):
        counts[-i] += 1
    return counts


def sample_context(shot_lengths: Sequence[int], budget: int = 6) -> list[tuple[int, int]]:
    """Context frames of the next shot given the frame counts of the history shots.

    Args:
      shot_lengths: frames of history shots 0..S_hist-1 (pixel frames in the
        original: each chosen frame is VAE-encoded alone into one latent).
      budget: f_context.
    Returns:
      [(shot_index, frame_index_within_shot)], oldest first, `budget` entries
      (none when there is no history).
    """
    if any(n <= 0 for n in shot_lengths):
        raise ValueError(f"every history shot needs at least one frame, got lengths {list(shot_lengths)}")
    out = []
    start = 0
    for shot, (n, count) in enumerate(zip(shot_lengths, context_counts(len(shot_lengths), budget))):
        if count > 0:
            if count == 1:
                idx = np.array([start], np.int64)
            else:
                idx = np.round(linspace_f32(start, start + n - 1, count)).astype(np.int64)
            out += [(shot, int(i) - start) for i in idx]
        start += n
    return out


class ShotLayout(NamedTuple):
    """Per latent frame of FrameConcat(context, target): int32 arrays of length n_ctx + T."""
    frame_pos: np.ndarray   # RoPE temporal position
    frame_shot: np.ndarray  # RoPE shot index k (angle += k * theta)
    frame_prompt: np.ndarray  # which shot's prompt the frame cross-attends to

    @property
    def target_shot(self) -> int:
        return int(self.frame_shot[-1])


def shot_layout(context_shots: Sequence[int], shot_index: int, target_frames: int = 21,
                context_slots: int = 6) -> ShotLayout:
    """RoPE positions / shot indices / prompt indices of context + target frames.

    Args:
      context_shots: source shot of every context frame (from `sample_context`);
        empty for the first shot, whose `context_slots` context frames are the
        original's all-zero placeholders in shot 0.
      shot_index: index of the shot being generated (its prompt).
      target_frames: latent frames of the target shot.
      context_slots: frames of context the target positions start after.
    """
    ctx = np.asarray(list(context_shots) or [0] * context_slots, np.int32)
    n = ctx.shape[0]
    pos = np.arange(n + target_frames, dtype=np.int32)
    shot = np.concatenate([ctx, np.full(target_frames, ctx[-1] + 1, np.int32)])
    prompt = np.concatenate([ctx, np.full(target_frames, shot_index, np.int32)])
    return ShotLayout(pos, shot.astype(np.int32), prompt.astype(np.int32))


def shot_theta(shotstream_cfg) -> float:
    """The RoPE phase per shot index, 0 when the indicator is switched off (the paper's ablation)."""
    return float(shotstream_cfg.shot_theta) if shotstream_cfg.shot_indicator else 0.0
