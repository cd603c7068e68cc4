"""The streaming pipeline on the toy model (fixed random weights, 32x32, 81-frame shots of 7 chunks):
frame counts, streaming order, one compile per jitted function across five shots, causality across
shots, the global-context ablation, and prompt errors.

References: the frame-count formula of the Wan VAE (1 + 4(n-1) for a shot's first chunk, 4n after),
and the pipeline itself run on a shorter story (causality)."""
import numpy as np
import pytest

from shotstream_jax import ShotStream, default_model, pipeline
from shotstream_jax.models import student


@pytest.fixture(scope="module")
def pipe():
    return ShotStream(*default_model.build())


def test_toy_model_shapes(pipe):
    assert (pipe.height, pipe.width, pipe.fps, pipe.chunks_per_shot) == (32, 32, 16, 7)


def test_streams_chunk_by_chunk(pipe, monkeypatch):
    calls = []
    real = pipeline._stream_chunk
    monkeypatch.setattr(pipeline, "_stream_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    shot = pipe.session("A quiet harbour at dawn.", seed=1).next_shot("Boats rock gently.")
    first = next(shot)
    assert len(calls) == 2  # chunk 0's frames are read while chunk 1 computes, not later
    assert first.dtype == np.uint8 and first.shape == (9, 32, 32, 3)
    rest = list(shot)
    assert [len(f) for f in rest] == [12] * 6 and len(calls) == 7


def test_one_device_dispatch_per_chunk(pipe, monkeypatch):
    # Reference: a count of every computation JAX launches on the device. With the
    # C++ fast path off, jitted calls and eager ops alike go through ExecuteReplicated.
    from jax._src import pjit
    from jax._src.interpreters import pxla
    launched = []
    execute = pxla.ExecuteReplicated.__call__
    monkeypatch.setattr(pjit, "_get_fastpath_data", lambda *a, **k: None)
    for cache in (pjit._cpp_pjit_cache_fun_only, pjit._cpp_pjit_cache_explicit_attributes):
        cache.clear()  # fast-path entries made by earlier tests (compiled code stays cached)
    monkeypatch.setattr(pxla.ExecuteReplicated, "__call__",
                        lambda self, *a, **k: launched.append(self.name) or execute(self, *a, **k))
    session = pipe.session("A quiet harbour at dawn.", seed=1)
    for prompt in ("Boats rock gently.", "A gull lands."):  # the first shot, and one with a context pass
        shot = session.next_shot(prompt)
        next(shot)  # the shot's set-up, chunks 0 and 1
        launched.clear()
        per_chunk = []
        for _ in shot:
            per_chunk.append(launched[:])
            launched.clear()
        assert per_chunk == [["jit(_stream_chunk)"]] * 5 + [[]]


def test_one_compile_for_five_shots_and_causality(pipe):
    prompts = ["Wide shot of a forest.", "A fox looks up.", "Close-up of its eyes.", "It runs away.",
               "Empty clearing."]
    jitted = [student.fill_global_cache, pipeline._stream_chunk]
    session = pipe.session("A misty forest.", seed=7)
    shots = [np.concatenate(list(session.next_shot(p))) for p in prompts[:2]]
    sizes = [f._cache_size() for f in jitted]
    shots += [np.concatenate(list(session.next_shot(p))) for p in prompts[2:]]
    assert [f._cache_size() for f in jitted] == sizes, "a later shot recompiled"
    assert all(s.shape == (81, 32, 32, 3) for s in shots)
    assert not np.array_equal(shots[0], shots[1])  # different prompts, different shots

    again = pipe.session("A misty forest.", seed=7)
    first_two = [np.concatenate(list(again.next_shot(p))) for p in prompts[:2]]
    for a, b in zip(first_two, shots[:2]):
        np.testing.assert_array_equal(a, b)


def test_global_context_off_forgets_earlier_shots(pipe):
    """Reference: a second shot made after different first shots. With the global context cache it
    depends on the first shot; with it off (the memory ablation) it cannot, so both stories agree."""
    def second_shot(first_prompt):
        session = pipe.session("A harbour.", seed=2)
        list(session.next_shot(first_prompt))
        return np.concatenate(list(session.next_shot("A gull lands.")))

    assert not np.array_equal(second_shot("Boats rock gently."), second_shot("A storm breaks."))
    pipe.global_context = False
    try:
        np.testing.assert_array_equal(second_shot("Boats rock gently."), second_shot("A storm breaks."))
    finally:
        pipe.global_context = True


def test_prompt_errors(pipe):
    with pytest.raises(ValueError, match="global caption is empty"):
        pipe.session("   ")
    session = pipe.session("A city.")
    with pytest.raises(ValueError, match="shot prompt is empty"):
        next(session.next_shot(""))
    assert session.shots == []


@pytest.mark.parametrize("mode", ["default", "masked"])
def test_first_shot_matches_full_sequence_reference(mode):
    """Reference: the shot sampled chunk by chunk with block-causal full-sequence forwards
    (tests/test_student.reference_shot), then decoded whole by the VAE. The default, through the
    public API untouched, must be the public code's first shot: six all-zero context latents in
    RoPE shot 0, seeing this shot's prompt; "masked" (an option) has an empty global cache."""
    import jax
    import jax.numpy as jnp

    from shotstream_jax import context
    from shotstream_jax.text import shot_prompt
    from tests.test_student import reference_shot
    pipe = ShotStream(*default_model.build())
    if mode == "masked":
        config = pipe.config.copy_and_resolve_references()
        config.shotstream.first_shot_context = "masked"
        pipe = ShotStream(config, pipe.dit, pipe.vae, pipe.text_encoder)
    got = np.concatenate(list(pipe.session("A glacier.", seed=4).next_shot("Ice cracks.")))

    emb = pipe.text_encoder.encode(shot_prompt("A glacier.", 0, "Ice cracks."))
    layout = context.shot_layout([], 0, 21, 6)
    if mode == "default":
        ctx, tkv = jnp.zeros((1, 6, *pipe.latent_hw, 16)), pipe.dit.encode_text(emb[:, None])
    else:
        ctx, tkv = None, pipe.dit.encode_text(emb)
    key = jax.random.fold_in(jax.random.PRNGKey(4), 0)
    latents = reference_shot(pipe.dit, ctx, layout, tkv, key, pipe.latent_hw, frames=21, theta=pipe.shot_theta)
    want = np.asarray(pipeline.to_uint8(pipe.vae.decode(pipe.vae.cfg.denormalize(latents))[0]))
    assert got.shape == want.shape == (81, 32, 32, 3)
    assert np.abs(got.astype(int) - want).max() <= 1  # uint8 rounding of float32-equal frames
