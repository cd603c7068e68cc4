"""The streaming pipeline on the default (toy) model: frame counts, streaming order, one compile
per jitted function across five shots, causality across shots, and prompt errors.

References: the frame-count formula of the Wan VAE (1 + 4(n-1) for a shot's first chunk, 4n after),
and the pipeline itself run on a shorter story (causality)."""
import numpy as np
import pytest

from shotstream_jax import ShotStream
from shotstream_jax.models import student, wan_vae


@pytest.fixture(scope="module")
def pipe():
    return ShotStream.load()


def test_default_model_shapes(pipe):
    assert (pipe.height, pipe.width, pipe.fps, pipe.chunks_per_shot) == (32, 32, 16, 7)


def test_streams_chunk_by_chunk(pipe, monkeypatch):
    calls = []
    real = student.denoise_chunk
    monkeypatch.setattr(student, "denoise_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    shot = pipe.session("A quiet harbour at dawn.", seed=1).next_shot("Boats rock gently.")
    first = next(shot)
    assert len(calls) == 1  # the first chunk is out before the second is computed
    assert first.dtype == np.uint8 and first.shape == (9, 32, 32, 3)
    rest = list(shot)
    assert [len(f) for f in rest] == [12] * 6 and len(calls) == 7


def test_one_compile_for_five_shots_and_causality(pipe):
    prompts = ["Wide shot of a forest.", "A fox looks up.", "Close-up of its eyes.", "It runs away.",
               "Empty clearing."]
    jitted = [student.fill_global_cache, student.denoise_chunk, student.commit_chunk, wan_vae._decode_step]
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


def test_prompt_errors(pipe):
    with pytest.raises(ValueError, match="global caption is empty"):
        pipe.session("   ")
    session = pipe.session("A city.")
    with pytest.raises(ValueError, match="shot prompt is empty"):
        next(session.next_shot(""))
    assert session.shots == []
