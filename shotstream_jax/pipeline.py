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
decoder while the next chunk is computed. Every jitted function compiles once:
shapes never change between chunks or shots.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from shotstream_jax import context as ctx_lib
from shotstream_jax import schedule
from shotstream_jax.models import student
from shotstream_jax.models.wan_dit import TextKV, WanDiT
from shotstream_jax.models.wan_vae import WanVAE, decode_step
from shotstream_jax.story import check_prompt
from shotstream_jax.text import TextEncoder, shot_prompt


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[-1, 1] float frames -> uint8."""
    return np.clip(np.round((np.asarray(frames, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


@dataclasses.dataclass
class _Shot:
    prompt: str                # the full multi-caption prompt of this shot
    embedding: jax.Array       # f32[L, text_dim]
    frames: np.ndarray         # f32[T, H, W, 3] in [-1, 1], the decoded shot


class ShotStream:
    """A loaded model: DiT student, VAE and text encoder, plus the config that drives them."""

    def __init__(self, config: ml_collections.ConfigDict, dit: WanDiT, vae: WanVAE, text_encoder: TextEncoder):
        self.config = config
        self.dit = dit
        self.vae = vae
        self.text_encoder = text_encoder
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
        self.first_shot_context = ss.get("first_shot_context", "masked")
        if self.first_shot_context not in ("masked", "zeros"):
            raise ValueError(f"shotstream.first_shot_context must be 'masked' or 'zeros', "
                             f"got {self.first_shot_context!r}")
        self.timesteps = jnp.asarray(
            schedule.student_timesteps(tuple(ss.denoising_steps), ss.timestep_shift), jnp.float32)
        self._graphdef, self._state = nnx.split(dit)
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

    def encode_context(self, frames: np.ndarray) -> jax.Array:
        """Context frames f32[Nc, H, W, 3] in [-1, 1] -> normalised latents f32[1, Nc, h, w, 16].

        Each frame is encoded as its own 1-frame clip (the batch axis), as the original.
        """
        z = self.vae.encode(jnp.asarray(frames)[:, None])  # [Nc, 1, h, w, z]
        return self.vae.cfg.normalize(z[:, 0])[None]


class Session:
    """One story: a global caption, the shots generated so far, the caches between them."""

    def __init__(self, pipe: ShotStream, global_caption: str, seed: int):
        self.pipe = pipe
        self.global_caption = global_caption
        self.key = jax.random.PRNGKey(seed)
        self.shots: list[_Shot] = []
        self._cache: Optional[student.DualCache] = None

    def _prepare_cache(self, embedding: jax.Array) -> tuple[student.DualCache, int]:
        """Fill the global cache from the story so far; returns (cache, RoPE shot index of the target).

        `embedding` f32[L, text_dim]: this shot's prompt, which the original's
        zero placeholder context of the first shot cross-attends to.
        """
        p = self.pipe
        nc = p.context_frames
        if self._cache is None:
            self._cache = student.init_cache(p.dit.cfg, 1, p.latent_hw, context_frames=nc,
                                             shot_frames=p.shot_latent_frames)
        if self.shots:
            picks = ctx_lib.sample_context([len(s.frames) for s in self.shots], nc)
            latents = p.encode_context(np.stack([self.shots[s].frames[f] for s, f in picks]))
            shots = [s for s, _ in picks]
            embeddings = [self.shots[s].embedding for s in shots]
        elif p.first_shot_context == "zeros":  # the original: six all-zero latents in shot 0, attended to
            latents = jnp.zeros((1, nc, *p.latent_hw, p.dit.cfg.in_channels))
            shots, embeddings = [], [embedding] * nc
        else:  # first shot: empty global cache, masked out
            return self._cache, ctx_lib.shot_layout([], 0, p.shot_latent_frames, nc).target_shot
        layout = ctx_lib.shot_layout(shots, len(self.shots), p.shot_latent_frames, nc)
        # Multi-caption: each context frame cross-attends to its own shot's prompt.
        text_kv = p.text_kv(jnp.stack(embeddings)[None])
        cache = student.fill_global_cache(
            p._graphdef, p._state, self._cache, latents, text_kv, jnp.asarray(layout.frame_shot[:nc]),
            jnp.arange(nc, dtype=jnp.int32), None, p.shot_theta)
        return cache, layout.target_shot

    def next_shot(self, prompt: str) -> Iterator[np.ndarray]:
        """Generate the next shot; yields uint8 [n, H, W, 3] frames as each chunk is decoded."""
        prompt = check_prompt(prompt, "shot prompt")
        p = self.pipe
        index = len(self.shots)
        full = shot_prompt(self.global_caption, index, prompt)
        emb = p.text_encoder.encode(full)  # [1, L, D]
        text_kv = p.text_kv(emb)
        cache, target_shot = self._prepare_cache(emb[0])
        self._cache = None  # donated to the jitted passes below
        decode_cache = p.vae.init_decode_cache(1, *p.latent_hw)
        pending, decoded = [], []

        def decode(x0):
            nonlocal decode_cache
            frames, decode_cache = decode_step(p.vae, p.vae.cfg.denormalize(x0), decode_cache)
            pending.append(frames)

        chunks = student.shot_chunks(
            p._graphdef, p._state, cache, jax.random.fold_in(self.key, index), text_kv, target_shot,
            shot_theta=p.shot_theta, timesteps=p.timesteps, chunk_frames=p.chunk_frames,
            latent_hw=p.latent_hw, before_commit=decode)
        for _, cache in chunks:
            frames = np.asarray(pending.pop()[0])
            decoded.append(frames)
            yield to_uint8(frames)
        self._cache = cache
        self.shots.append(_Shot(full, emb[0], np.concatenate(decoded)))
