"""Prompt encoding: tokenizer + umT5 -> the text embeddings the DiT cross-attends to.

As Wan's `T5EncoderModel`: prompts are whitespace-cleaned, tokenized with the
end-of-sequence token, padded / truncated to `text_len` (512) tokens, encoded
with the padding masked out, and every embedding past the prompt's length is
set to zero (Wan cuts them off and the DiT zero-pads back to text_len).

Multi-shot prompts follow the public ShotStream code (utils/dataset.py builds
`f'shot{i}:' + caption[f'shot{i+1}']` and the pipelines prepend the global
caption with plain `+`): `global_caption + "shot{i}:" + shot_caption`, i
counted from 0, with no separating spaces. (DESIGN.md writes " shot{i}: "; we
follow the code the released weights were trained with.)
"""
from __future__ import annotations

import collections
import html
import os
import re
import warnings
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shotstream_jax.models.umt5 import UMT5Encoder

# Where a tokenizer may sit relative to a checkpoint path: the directory itself,
# a transformers-style tokenizer/ folder, or the Wan2.1 release's google/umt5-xxl/.
_TOKENIZER_DIRS = (".", "tokenizer", os.path.join("google", "umt5-xxl"))


def shot_prompt(global_caption: str, i: int, shot_caption: str) -> str:
    """The prompt of shot i (0-based) of a multi-shot story, exactly as ShotStream builds it."""
    return global_caption + f"shot{i}:" + shot_caption


def clean_prompt(text: str) -> str:
    """Wan's 'whitespace' cleaning: unescape HTML twice, collapse whitespace.

    (Wan also runs ftfy.fix_text first; we do when ftfy is installed.)
    """
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class Tokenizer:
    """Token ids with a trailing end-of-sequence token, from the model's own files.

    tokenizer.json (the `tokenizers` package; its post-processor adds `</s>`) or
    spiece.model (sentencepiece; we add `</s>`). Never the network.
    """

    def __init__(self, path: str):
        self.path = path
        if path.endswith(".json"):
            from tokenizers import Tokenizer as HFTokenizer
            self._hf = HFTokenizer.from_file(path)
            self._hf.no_truncation()
            self._hf.no_padding()
            self.pad_id = self._hf.token_to_id("<pad>") or 0
            self.eos_id = self._hf.token_to_id("</s>")
            self.unk_id = self._hf.token_to_id("<unk>")
        else:
            import sentencepiece as spm
            self._hf = None
            self._sp = spm.SentencePieceProcessor(model_file=path)
            self.pad_id = max(self._sp.pad_id(), 0)
            self.eos_id = self._sp.eos_id()
            self.unk_id = self._sp.unk_id()

    @classmethod
    def find(cls, path: str) -> "Tokenizer":
        """The tokenizer stored with a checkpoint (directory or file path)."""
        base = path if os.path.isdir(path) else os.path.dirname(path)
        for sub in _TOKENIZER_DIRS:
            for name in ("tokenizer.json", "spiece.model"):
                p = os.path.join(base, sub, name)
                if os.path.exists(p):
                    return cls(p)
        raise FileNotFoundError(
            f"{path}: no tokenizer.json or spiece.model in {', '.join(_TOKENIZER_DIRS)} beside it; "
            f"pass tokenizer_path= pointing at the umT5 tokenizer files")

    def __call__(self, text: str) -> list[int]:
        if self._hf is not None:
            return self._hf.encode(text).ids
        return self._sp.encode(text) + [self.eos_id]

    def unknown_words(self, text: str) -> list[str]:
        """The pieces of `text` the vocabulary has no token for: the model reads each as `<unk>`.

        A small word-level vocabulary (the Shapes model's) leaves out most words; umT5's
        sentencepiece vocabulary covers nearly everything.
        """
        if self._hf is not None:
            enc = self._hf.encode(text)
            return [text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets) if i == self.unk_id]
        pieces = self._sp.encode(text, out_type=str)  # an unknown piece keeps its own text
        return [p for p in pieces if self._sp.piece_to_id(p) == self.unk_id]


class ByteTokenizer:
    """UTF-8 bytes as tokens (id = byte + 3; pad 0, eos 1): the toy default model's tokenizer.

    Needs no vocabulary file, so the bundled random model runs anywhere; real
    models use the umT5 tokenizer files through `Tokenizer`.
    """
    pad_id, eos_id = 0, 1
    vocab_size = 259

    def __call__(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")] + [self.eos_id]

    def unknown_words(self, text: str) -> list[str]:
        return []  # every byte has a token


@nnx.jit
def _encode_padded(model: UMT5Encoder, ids, mask):
    h = model(ids, mask)
    return jnp.where(mask[..., None] > 0, h, 0.0)


class TextEncoder:
    """Prompts -> f32[B, text_len, d_model] embeddings, zero past each prompt's length.

    Keeps the `cache_size` prompts it encoded last (keyed by the cleaned prompt
    text), so repeated prompts are free while a long-running server's memory
    stays bounded (8 MB per prompt at umT5-XXL size). Prompts are encoded one at
    a time: one compile for all of them.
    """

    def __init__(self, model: UMT5Encoder, tokenizer: Union[Tokenizer, ByteTokenizer], text_len: int = 512,
                 cache_size: int = 32):
        self.model = model
        # The model's graph walked once, not on every prompt (3.1 -> 0.9 ms a Shapes prompt on a CPU).
        self._encode = nnx.cached_partial(_encode_padded, model)
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.cache_size = cache_size
        self._cache: collections.OrderedDict[str, jax.Array] = collections.OrderedDict()

    @classmethod
    def load(cls, path: str, tokenizer_path: Optional[str] = None, text_len: int = 512,
             dtype: str = "float32", param_dtype: str = "float32") -> "TextEncoder":
        """umT5 weights from `path` (see `convert.load_umt5`), tokenizer beside them unless given."""
        from shotstream_jax.convert import load_umt5
        model = load_umt5(path, dtype=dtype, param_dtype=param_dtype)
        tok = Tokenizer(tokenizer_path) if tokenizer_path else Tokenizer.find(path)
        return cls(model, tok, text_len)

    def tokenize(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """One prompt -> (ids int32[text_len], mask int32[text_len]); warns when it truncates or
        holds words the tokenizer does not know."""
        text = clean_prompt(prompt)
        if not text:
            raise ValueError("empty prompt: give each shot a non-empty description")
        ids = self.tokenizer(text)
        unknown = self.tokenizer.unknown_words(text)
        if unknown:
            warnings.warn(f"the model's tokenizer does not know {', '.join(map(repr, unknown))}: the model reads "
                          f"{'each' if len(unknown) > 1 else 'it'} as <unk>, an unknown word (prompt {text[:60]!r})",
                          stacklevel=3)
        if len(ids) > self.text_len:
            warnings.warn(f"prompt is {len(ids)} tokens, longer than text_len={self.text_len}; "
                          f"truncated (it starts {text[:60]!r})", stacklevel=3)
            ids = ids[:self.text_len - 1] + [self.tokenizer.eos_id]
        n = len(ids)
        out = np.full((self.text_len,), self.tokenizer.pad_id, np.int32)
        out[:n] = ids
        mask = (np.arange(self.text_len) < n).astype(np.int32)
        return out, mask

    def encode(self, prompts: Union[str, Sequence[str]]) -> jax.Array:
        """str or list of B str -> f32[B, text_len, d_model] (B = 1 for a str)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        out = []
        for p in prompts:
            key = clean_prompt(p)
            if key in self._cache:
                self._cache.move_to_end(key)
            else:
                ids, mask = self.tokenize(p)
                self._cache[key] = self._encode(jnp.asarray(ids[None]), jnp.asarray(mask[None]))[0]
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            out.append(self._cache[key])
        return jnp.stack(out)

    __call__ = encode
