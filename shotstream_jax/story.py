"""Story files: the global caption and the shot prompts of a multi-shot video.

Two formats are accepted:
  ours:       {"global_caption": "...", "shots": ["...", "..."]}
  reference:  {"global_caption": "...", "shot1": "...", "shot2": "...", ...}
              (the caption JSON of the ShotStream data and test sets)
"""
from __future__ import annotations

import dataclasses
import json
import re


class StoryError(ValueError):
    """A malformed story file; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Story:
    global_caption: str
    shots: tuple[str, ...]


def check_prompt(prompt, what: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"{what} must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{what} is empty; describe the shot in a few words")
    return prompt.strip()


def parse_story(obj, src: str = "<story>") -> Story:
    if not isinstance(obj, dict):
        raise StoryError(f"{src}: expected a JSON object with 'global_caption' and 'shots'")
    if "global_caption" not in obj:
        raise StoryError(f"{src}: missing 'global_caption'")
    numbered = {k: v for k, v in obj.items() if re.fullmatch(r"shot\d+", k)}
    if "shots" in obj:
        shots = obj["shots"]
        if not isinstance(shots, list):
            raise StoryError(f"{src}: 'shots' must be a list of prompts")
        names = [f"shots[{i}]" for i in range(len(shots))]
    elif numbered:
        order = sorted(numbered, key=lambda k: int(k[4:]))
        expected = [f"shot{i}" for i in range(1, len(order) + 1)]
        if order != expected:
            raise StoryError(f"{src}: shot keys must run shot1..shotN without gaps, found {order}")
        shots, names = [numbered[k] for k in order], order
    else:
        raise StoryError(f"{src}: no shots (give a 'shots' list or 'shot1', 'shot2', ... keys)")
    if not shots:
        raise StoryError(f"{src}: the story has no shots")
    try:
        glob = check_prompt(obj["global_caption"], "global_caption")
        shots = tuple(check_prompt(s, n) for s, n in zip(shots, names))
    except ValueError as e:
        raise StoryError(f"{src}: {e}") from None
    return Story(glob, shots)


def load_story(path: str) -> Story:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise StoryError(f"{path}: no such story file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StoryError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise StoryError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    return parse_story(obj, path)
