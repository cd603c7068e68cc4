"""The paper's Table 1 metrics of a multi-shot video, from frames, its shot lengths and captions.

Definitions (docs/evaluation.md has them in full). Features are L2-normalised;
cos is their dot product. For a sequence of n features f_0..f_{n-1},
VBench's consistency is

    C(f) = mean over i >= 1 of ( max(0, cos(f_i, f_{i-1})) + max(0, cos(f_i, f_0)) ) / 2

(1 for n = 1).
  intra-shot subject / background: C over each shot's frames, DINOv2 / CLIP
      image features, averaged over shots;
  inter-shot semantic: mean cos over all pairs of shots of the shot embeddings
      (the normalised mean of a shot's CLIP frame features);
  inter-shot subject / background: C over the shots' middle frames (one
      keyframe per shot), DINOv2 / CLIP features;
  transition control: F1 of the weight-free cut detector against the story's
      boundaries (`eval.cuts`);
  text alignment: mean over shots of the mean over the shot's frames of
      cos(CLIP image feature, CLIP text feature of the shot's own caption);
  aesthetic quality: mean over frames of the LAION aesthetic predictor on the
      CLIP image feature, divided by 10;
  dynamic degree: 100 if the video is dynamic by VBench's rule (`eval.flow`)
      applied to its frame steps within shots, else 0; over a set of videos,
      the percentage of dynamic ones.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import numpy as np

from shotstream_jax.eval import cuts, flow
from shotstream_jax.story import StoryError, load_story

# (key, Table 1 column, extractors needed)
METRICS = (
    ("intra_subject", "Intra-shot subject", ("dino",)),
    ("intra_background", "Intra-shot background", ("clip",)),
    ("inter_semantic", "Inter-shot semantic", ("clip",)),
    ("inter_subject", "Inter-shot subject", ("dino",)),
    ("inter_background", "Inter-shot background", ("clip",)),
    ("transition_control", "Transition control", ()),
    ("text_alignment", "Text alignment", ("clip",)),
    ("aesthetic_quality", "Aesthetic quality", ("clip", "aesthetic")),
    ("dynamic_degree", "Dynamic degree", ()),
)
# ShotStream's row of the paper's Table 1 (DESIGN.md section 10), for reference in reports.
PAPER = {"intra_subject": 0.825, "intra_background": 0.819, "inter_semantic": 0.762, "inter_subject": 0.654,
         "inter_background": 0.645, "transition_control": 0.978, "text_alignment": 0.234,
         "aesthetic_quality": 0.571, "dynamic_degree": 63.56}
CUT_TOLERANCE = 2  # frames between a detected cut and the story's boundary


@dataclasses.dataclass
class Extractors:
    clip: Optional[object] = None       # eval.features.CLIPFeatures
    dino: Optional[object] = None       # eval.features.DINOFeatures
    aesthetic: Optional[object] = None  # eval.features.AestheticHead

    def has(self, names) -> bool:
        return all(getattr(self, n) is not None for n in names)

    def missing(self, names) -> list[str]:
        return [n for n in names if getattr(self, n) is None]


def story_for(video: str, story_path: str) -> tuple[list[str], list[int] | None, str]:
    """(shot captions, shot lengths or None for equal shots, the story file) of one video."""
    f = story_path
    if os.path.isdir(story_path):
        f = os.path.join(story_path, os.path.splitext(os.path.basename(video))[0] + ".json")
    story = load_story(f)
    with open(f) as fh:
        lengths = json.load(fh).get("shot_frames")
    if lengths is not None and (not isinstance(lengths, list) or len(lengths) != len(story.shots)
                                or not all(isinstance(n, int) and n > 0 for n in lengths)):
        raise StoryError(f"{f}: 'shot_frames' must list one positive frame count per shot "
                         f"({len(story.shots)} shots)")
    return list(story.shots), lengths, f


def shot_lengths(n_frames: int, n_shots: int, given, story_file: str) -> list[int]:
    """The story's "shot_frames" if given (checked against the video), else equal shots."""
    if given is not None:
        if sum(given) != n_frames:
            raise ValueError(f"{story_file}: shot_frames add up to {sum(given)} frames; the video has {n_frames}")
        return list(given)
    if n_frames % n_shots:
        raise ValueError(f"{n_frames} frames do not split into {n_shots} equal shots; give \"shot_frames\" "
                         f"in {story_file}")
    return [n_frames // n_shots] * n_shots


def consistency(f: np.ndarray) -> float:
    """VBench's C(f) (module docstring) of normalised features [n, D]."""
    if len(f) < 2:
        return 1.0
    prev = np.maximum(0.0, (f[1:] * f[:-1]).sum(-1))
    first = np.maximum(0.0, f[1:] @ f[0])
    return float(np.mean((prev + first) / 2))


def _shots(x: np.ndarray, lengths) -> list[np.ndarray]:
    return np.split(x, np.cumsum(lengths)[:-1])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def intra_shot(f: np.ndarray, lengths) -> tuple[float, list[float]]:
    per_shot = [consistency(s) for s in _shots(f, lengths)]
    return float(np.mean(per_shot)), per_shot


def inter_shot_semantic(f: np.ndarray, lengths) -> float:
    e = _unit(np.stack([s.mean(0) for s in _shots(f, lengths)]))
    if len(e) < 2:
        return 1.0
    i, j = np.triu_indices(len(e), 1)
    return float(np.mean((e[i] * e[j]).sum(-1)))


def inter_shot_keyframes(f: np.ndarray, lengths) -> float:
    return consistency(np.stack([s[len(s) // 2] for s in _shots(f, lengths)]))


def text_alignment(image_f: np.ndarray, text_f: np.ndarray, lengths) -> tuple[float, list[float]]:
    per_shot = [float(np.mean(s @ t)) for s, t in zip(_shots(image_f, lengths), text_f)]
    return float(np.mean(per_shot)), per_shot


def shot_motion(scores: np.ndarray, sampled: np.ndarray, lengths) -> list[Optional[float]]:
    """Mean motion of the steps between sampled frames `sampled` that lie inside each shot."""
    shot_of = np.searchsorted(np.cumsum(lengths), sampled, side="right")
    inside = shot_of[1:] == shot_of[:-1]
    out = []
    for k in range(len(lengths)):
        sel = inside & (shot_of[1:] == k)
        out.append(float(scores[sel].mean()) if sel.any() else None)
    return out


def score_video(frames: np.ndarray, fps: float, lengths, captions, ex: Extractors) -> dict:
    """Table 1 metrics of one video: {"metrics": {key: value or None}, "per_shot": {...},
    "cuts": detected boundaries, "boundaries": the story's}. None = not computed."""
    lengths = [int(n) for n in lengths]
    if sum(lengths) != len(frames):
        raise ValueError(f"shot lengths {lengths} do not add up to the video's {len(frames)} frames")
    if len(captions) != len(lengths):
        raise ValueError(f"{len(captions)} captions for {len(lengths)} shots")
    m = {k: None for k, _, _ in METRICS}
    per_shot = {}

    detected = cuts.detect_cuts(frames)
    truth = cuts.boundaries(lengths)
    m["transition_control"] = cuts.f1(*cuts.match(detected, truth, CUT_TOLERANCE))

    sampled = np.arange(0, len(frames), flow.frame_stride(fps))
    motion = flow.motion_scores(frames[sampled])
    shot_of = np.searchsorted(np.cumsum(lengths), sampled, side="right")
    within = motion[shot_of[1:] == shot_of[:-1]]  # a step across a cut is not motion
    m["dynamic_degree"] = 100.0 if flow.is_dynamic(within) else 0.0
    per_shot["motion"] = shot_motion(motion, sampled, lengths)

    if ex.dino is not None:
        f = ex.dino.images(frames)
        m["intra_subject"], per_shot["intra_subject"] = intra_shot(f, lengths)
        m["inter_subject"] = inter_shot_keyframes(f, lengths)
    if ex.clip is not None:
        f = ex.clip.images(frames)
        m["intra_background"], per_shot["intra_background"] = intra_shot(f, lengths)
        m["inter_semantic"] = inter_shot_semantic(f, lengths)
        m["inter_background"] = inter_shot_keyframes(f, lengths)
        m["text_alignment"], per_shot["text_alignment"] = text_alignment(f, ex.clip.texts(captions), lengths)
        if ex.aesthetic is not None:
            m["aesthetic_quality"] = float(np.mean(ex.aesthetic(f)))
    return {"metrics": m, "per_shot": per_shot, "cuts": detected, "boundaries": truth}


def aggregate(results: list[dict]) -> dict:
    """Mean of each metric over videos (dynamic degree: the percentage of dynamic videos)."""
    out = {}
    for k, _, _ in METRICS:
        vals = [r["metrics"][k] for r in results if r["metrics"][k] is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out
