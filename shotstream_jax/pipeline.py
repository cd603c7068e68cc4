"""The streaming ShotStream pipeline: prompts in, decoded frames out, chunk by chunk.

    pipe = ShotStream.load()                    # or ShotStream.load("models/shotstream")
    session = pipe.session("A rainy night city.", seed=0)
    for frames in session.next_shot("Wide shot of the street."):  # uint8 [n, H, W, 3]
        show(frames)
    for frames in session.next_shot("Close-up of her face."):    # typed while shot 1 played
        show(frames)

Per shot (DESIGN.md section 7): the story so far is sampled into 6 context
frames (re-encoded by the VAE from the decoded history, each as its own
1-frame clip, as the original does), one t=0 pass writes them into the global
cache, then 7 chunks of 3 latent frames are each denoised in 4 steps,
committed to the local cache by a t=0 pass, and decoded by the streaming VAE
decoder. Every jitted function compiles once: shapes never change between
chunks or shots.

The hot path is one jitted call per chunk (`_stream_chunk`): the previous
chunk's commit pass, this chunk's 4 denoising steps, its VAE decode and the
conversion to uint8, with the DiT cache and the decoder cache donated. A
chunk's frames are read back to the host while the next chunk is computing
(one chunk later), and the story's decoded history stays on the device as
uint8. A shot's last chunk is never committed (no later chunk reads it).
The session's state is its list of shots (`Session.shots`: prompt, text
embedding, uint8 frames) and its seed: truncating the list rewinds the story.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from shotstream_jax import context as ctx_lib
from shotstream_jax import schedule
from shotstream_jax.models import student
from shotstream_jax.models.inference import for_inference
from shotstream_jax.models.wan_dit import TextKV, WanDiT
from shotstream_jax.models.wan_vae import DecodeCache, WanVAE
from shotstream_jax.story import check_prompt
from shotstream_jax.text import TextEncoder, shot_prompt


def to_uint8(frames: jax.Array) -> jax.Array:
    """[-1, 1] float frames -> uint8 (on the device that holds them)."""
    return jnp.clip(jnp.round((jnp.asarray(frames, jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def from_uint8(frames: jax.Array) -> jax.Array:
    """uint8 frames -> f32 in [-1, 1]."""
    return frames.astype(jnp.float32) / 127.5 - 1.0


@dataclasses.dataclass
class _Shot:
    prompt: str                # the full multi-caption prompt of this shot
    embedding: jax.Array       # f32[L, text_dim]
    frames: jax.Array          # uint8[T, H, W, 3] on the device, the decoded shot


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(5, 6))
def _stream_chunk(dit_graphdef, vae_graphdef, n: int, dit_state, vae_state, cache: student.DualCache,
                  decode_cache: DecodeCache, pending, shot_noise, k_steps, chunk, text_kv: TextKV, target_shot,
                  shot_theta, timesteps):
    """A chunk's whole device work in one call: commit `pending` (the previous chunk's x0, None in a
    shot's first chunk), denoise chunk `chunk` (n latent frames) of the shot's noise, decode, to uint8.
    Returns (frames uint8[n', H, W, 3], x0, cache, decode_cache)."""
    noise = jax.lax.dynamic_slice_in_dim(shot_noise, chunk * n, n, axis=1)
    x0, cache = student.chunk_pass(nnx.merge(dit_graphdef, dit_state), cache, pending, noise,
                                   jax.random.fold_in(k_steps, chunk), text_kv, target_shot, shot_theta, timesteps)
    vae = nnx.merge(vae_graphdef, vae_state)
    frames, decode_cache = vae.decode_chunk(vae.cfg.denormalize(x0), decode_cache)
    return to_uint8(frames[0]), x0, cache, decode_cache


class ShotStream:
    """A loaded model: DiT student, VAE and text encoder, plus the config that drives them."""

    def __init__(self, config: ml_collections.ConfigDict, dit: WanDiT, vae: WanVAE, text_encoder: TextEncoder):
        self.config = config
        # On accelerators all three compute in the DiT's dtype with parameters stored in it (bf16).
        self.dit = for_inference(dit, remat=False)
        self.vae = vae = for_inference(vae, dit.cfg.dtype)
        self.text_encoder = TextEncoder(for_inference(text_encoder.model, dit.cfg.dtype), text_encoder.tokenizer,
                                        text_encoder.text_len, text_encoder.cache_size)
        ss = config.shotstream
        self.height, self.width = config.video.height, config.video.width
        self.fps = config.video.fps
        sf = vae.cfg.spatial_factor
        if self.height % (sf * 2) or self.width % (sf * 2):
            raise ValueError(f"video size {self.height}x{self.width} must be divisible by {sf * 2} "
                             f"(VAE factor {sf} times patch size 2)")
        self.latent_hw = (self.height // sf, self.width // sf)
        self.context_frames = ss.context_frames
        self.chunk_frames = ss.chunk_frames
        self.shot_latent_frames = ss.shot_latent_frames
        if self.shot_latent_frames % self.chunk_frames:
            raise ValueError(f"shot_latent_frames={self.shot_latent_frames} is not a multiple of "
                             f"chunk_frames={self.chunk_frames}")
        self.chunks_per_shot = self.shot_latent_frames // self.chunk_frames
        self.shot_theta = ctx_lib.shot_theta(ss)
        self.first_shot_context = ss.get("first_shot_context", "zeros")
        if self.first_shot_context not in ("masked", "zeros"):
            raise ValueError(f"shotstream.first_shot_context must be 'masked' or 'zeros', "
                             f"got {self.first_shot_context!r}")
        # False: every shot starts as if it were the story's first (an ablation: no memory of earlier shots).
        self.global_context = True
        self.timesteps = jnp.asarray(
            schedule.student_timesteps(tuple(ss.denoising_steps), ss.timestep_shift), jnp.float32)
        self._graphdef, self._state = nnx.split(self.dit)
        self._vae_graphdef, self._vae_state = nnx.split(vae)
        self._text_kv = jax.jit(lambda state, emb: nnx.merge(self._graphdef, state).encode_text(emb))

    @classmethod
    def load(cls, model_dir: Optional[str] = None, **dit_overrides) -> "ShotStream":
        """A model directory written by `shotstream-convert` / training, or None for the default model."""
        from shotstream_jax import model_dir as md
        if model_dir is None:
            from shotstream_jax import default_model
            return cls(*default_model.load(**dit_overrides))
        return cls(*md.load_pipeline(model_dir, **dit_overrides))

    def session(self, global_caption: str, seed: int = 0) -> "Session":
        return Session(self, check_prompt(global_caption, "global caption"), seed)

    # -- the pieces a session strings together

    def text_kv(self, embeddings: jax.Array) -> TextKV:
        """f32[B, (P,) L, text_dim] -> per-layer cross-attention K/V, once per prompt set."""
        return self._text_kv(self._state, embeddings)

    def encode_context(self, frames: jax.Array) -> jax.Array:
        """Context frames uint8[Nc, H, W, 3] -> normalised latents f32[1, Nc, h, w, 16].

        Each frame is encoded as its own 1-frame clip (the batch axis), as the original.
        """
        z = self.vae.encode(from_uint8(jnp.asarray(frames))[:, None])  # [Nc, 1, h, w, z]
        return self.vae.cfg.normalize(z[:, 0])[None]


class Session:
    """One story: a global caption, the shots generated so far, the caches between them."""

    def __init__(self, pipe: ShotStream, global_caption: str, seed: int):
        self.pipe = pipe
        self.global_caption = global_caption
        self.key = jax.random.PRNGKey(seed)
        self.shots: list[_Shot] = []
        self._cache: Optional[student.DualCache] = None

    def truncate(self, num_shots: int) -> None:
        """Keep the first `num_shots` shots and forget the rest (rewind the story).

        Shot k's noise depends only on (seed, k) and its context is re-sampled from
        the kept shots, so the next shot equals the one a fresh session given the
        same kept shots would generate.
        """
        if not 0 <= num_shots <= len(self.shots):
            raise ValueError(f"cannot keep {num_shots} shots of a story with {len(self.shots)}")
        del self.shots[num_shots:]
        self._cache = None  # a first shot (masked mode) reads this cache as is: start it fresh

    def _prepare_cache(self, embedding: jax.Array) -> tuple[student.DualCache, int]:
        """Fill the global cache from the story so far; returns (cache, RoPE shot index of the target).

        `embedding` f32[L, text_dim]: this shot's prompt, which the original's
        zero placeholder context of the first shot cross-attends to.
        """
        p = self.pipe
        nc = p.context_frames
        history = self.shots if p.global_context else []
        if self._cache is None or not p.global_context:
            self._cache = student.init_cache(p.dit.cfg, 1, p.latent_hw, context_frames=nc,
                                             shot_frames=p.shot_latent_frames)
        if history:
            picks = ctx_lib.sample_context([len(s.frames) for s in history], nc)
            latents = p.encode_context(jnp.stack([history[s].frames[f] for s, f in picks]))
            shots = [s for s, _ in picks]
            embeddings = [history[s].embedding for s in shots]
        elif p.first_shot_context == "zeros":  # the original: six all-zero latents in shot 0, attended to
            latents = jnp.zeros((1, nc, *p.latent_hw, p.dit.cfg.in_channels))
            shots, embeddings = [], [embedding] * nc
        else:  # first shot: empty global cache, left out of the key prefix
            empty = self._cache.replace(context_len=jnp.zeros((), jnp.int32), num_local=jnp.zeros((), jnp.int32))
            return empty, ctx_lib.shot_layout([], 0, p.shot_latent_frames, nc).target_shot
        layout = ctx_lib.shot_layout(shots, len(history), p.shot_latent_frames, nc)
        # Multi-caption: each context frame cross-attends to its own shot's prompt.
        text_kv = p.text_kv(jnp.stack(embeddings)[None])
        cache = student.fill_global_cache(
            p._graphdef, p._state, self._cache, latents, text_kv, jnp.asarray(layout.frame_shot[:nc]),
            jnp.arange(nc, dtype=jnp.int32), None, p.shot_theta)
        return cache, layout.target_shot

    def next_shot(self, prompt: str) -> Iterator[np.ndarray]:
        """Generate the next shot; yields uint8 [n, H, W, 3] frames as each chunk is decoded.

        Closing the generator early cuts the shot short: the chunks yielded so far
        become the shot, and the story continues from them.
        """
        prompt = check_prompt(prompt, "shot prompt")
        p = self.pipe
        index = len(self.shots)
        full = shot_prompt(self.global_caption, index, prompt)
        emb = p.text_encoder.encode(full)  # [1, L, D]
        text_kv = p.text_kv(emb)
        cache, target_shot = self._prepare_cache(emb[0])
        self._cache = None  # donated to the jitted passes below
        decode_cache = p.vae.init_decode_cache(1, *p.latent_hw)
        noise, k_steps = student.shot_noise(jax.random.fold_in(self.key, index), cache, 1, p.latent_hw)
        shot_args = (text_kv, jnp.asarray(target_shot, jnp.int32), jnp.asarray(p.shot_theta, jnp.float32),
                     p.timesteps)
        x0, ready, decoded, shown = None, None, [], 0
        try:
            for c in range(p.chunks_per_shot):
                frames, x0, cache, decode_cache = _stream_chunk(
                    p._graphdef, p._vae_graphdef, p.chunk_frames, p._state, p._vae_state, cache, decode_cache, x0,
                    noise, k_steps, np.int32(c), *shot_args)
                frames.copy_to_host_async()
                decoded.append(frames)
                if ready is not None:  # the previous chunk's frames, read while this one computes
                    shown += 1
                    yield np.asarray(ready)
                ready = frames
            shown += 1
            yield np.asarray(ready)
        except GeneratorExit:  # a cut: the chunks the consumer was given become the shot
            self.shots.append(_Shot(full, emb[0], jnp.concatenate(decoded[:shown])))
            raise
        self._cache = cache
        self.shots.append(_Shot(full, emb[0], jnp.concatenate(decoded)))
