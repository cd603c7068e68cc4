"""TextEncoder against Wan's T5EncoderModel recipe run on transformers (tokenizer + UMT5EncoderModel + zero padding)."""
import warnings

import numpy as np
import pytest
import torch

from shotstream_jax.text import TextEncoder, clean_prompt, shot_prompt
import transformers

from tests.torch_refs import tiny_umt5_dir

WORDS = "a the man woman red blue car walks runs street night day camera cuts close-up shot0: shot1:".split()
TEXT_LEN = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_umt5_dir(tmp_path_factory.mktemp("umt5"), WORDS)


@pytest.fixture(scope="module")
def enc(model_dir):
    return TextEncoder.load(str(model_dir), text_len=TEXT_LEN)


def _wan_reference(model_dir, prompts):
    """Wan's T5EncoderModel.__call__ + the DiT's zero padding, on the transformers model."""
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"),
                                               pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    model = transformers.UMT5EncoderModel.from_pretrained(model_dir).eval()
    batch = tok([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
                max_length=TEXT_LEN, add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    return (h * batch.attention_mask[..., None]).numpy(), batch.attention_mask.numpy()


def test_matches_wan_recipe(enc, model_dir):
    """Reference: Wan T5EncoderModel (HF tokenizer, pad to text_len, encode, cut at length) + zero pad."""
    prompts = ["a man walks", "the  red car runs \n at night ,camera cuts"]
    want, mask = _wan_reference(model_dir, prompts)
    got = np.asarray(enc(prompts))
    assert got.shape == (2, TEXT_LEN, 32)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    assert not got[0, mask[0].sum():].any()


def test_cache_reuses_encoded_prompts(enc):
    """Reference: the first encoding of the same prompt."""
    first = enc("a woman runs")
    n = len(enc._cache)
    again = enc("a  woman runs ")  # same after cleaning
    assert len(enc._cache) == n and again is not None
    np.testing.assert_array_equal(first, again)


def test_overlong_prompt_truncated_with_warning(enc, model_dir):
    """Reference: HF tokenizer truncation=True to max_length (keeps the trailing </s>)."""
    long = " ".join(["red car"] * 20)
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = enc.tokenize(long)
    assert mask.all() and ids[-1] == 1
    want, _ = _wan_reference(model_dir, [long])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(np.asarray(enc(long)), want, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_rejected(enc, prompt):
    """Reference: the documented contract (a clear ValueError)."""
    with pytest.raises(ValueError, match="empty prompt"):
        enc(prompt)


def test_shot_prompt_matches_shotstream():
    """Reference: ShotStream utils/dataset.py + pipeline/causal_inference.py string building."""
    caption = {"global_caption": "G.", "shot1": "first", "shot2": "second"}
    want = [caption["global_caption"] + f"shot{i}:" + caption[f"shot{i + 1}"] for i in range(2)]
    assert [shot_prompt("G.", i, caption[f"shot{i + 1}"]) for i in range(2)] == want == ["G.shot0:first",
                                                                                        "G.shot1:second"]


@pytest.fixture(scope="module")
def spiece(model_dir, tmp_path_factory):
    """(TextEncoder on a sentencepiece model trained on WORDS, sentencepiece's own processor)."""
    import sentencepiece as spm
    path = tmp_path_factory.mktemp("spiece")
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 4
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_prefix=str(path / "spiece"),
                                   vocab_size=40, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   minloglevel=2)
    enc = TextEncoder.load(str(model_dir), tokenizer_path=str(path / "spiece.model"), text_len=TEXT_LEN)
    return enc, spm.SentencePieceProcessor(model_file=str(path / "spiece.model"))


def test_sentencepiece_tokenizer(spiece):
    """Reference: sentencepiece's own encode + T5's trailing </s> (as the umT5 spiece.model is used)."""
    enc, sp = spiece
    ids, mask = enc.tokenize("a man  walks")
    want = sp.encode("a man walks") + [1]
    assert list(ids[:len(want)]) == want and mask.sum() == len(want) and not ids[len(want):].any()


def test_unknown_words_warned(enc):
    """Reference: the vocabulary the tokenizer was built from (WORDS); the model reads the rest as <unk> (id 2)."""
    words = "a purple man walks dragon".split()
    with pytest.warns(UserWarning, match="does not know 'purple', 'dragon'"):
        ids, mask = enc.tokenize("a purple man walks  dragon")
    assert [int(i) for i in ids[:mask.sum()]] == [WORDS.index(w) + 3 if w in WORDS else 2 for w in words] + [1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.tokenize("the red car runs night")


def test_sentencepiece_unknown_words(spiece):
    """Reference: sentencepiece's own pieces; characters absent from its training text are <unk>."""
    enc, sp = spiece
    assert sp.encode("a man walks 7")[-1] == 2
    with pytest.warns(UserWarning, match="does not know '7'"):
        enc.tokenize("a man walks 7")
