"""Tiny PyTorch reference models built inside the tests (diffusers / transformers).

Imported by tests only: PyTorch is a test extra, never a runtime dependency.
"""
import numpy as np
import torch

# diffusers WanTransformer3DModel name -> original Wan2.1 name, written out from
# the two codebases' module names (diffusers transformer_wan.py, Wan model.py).
_DIFFUSERS_TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    (".attn1.to_out.0.", ".self_attn.o."),
    (".attn2.to_out.0.", ".cross_attn.o."),
    (".attn1.to_", ".self_attn."),
    (".attn2.to_", ".cross_attn."),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".norm2.", ".norm3."),
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
    (".scale_shift_table", ".modulation"),
    ("proj_out.", "head.head."),
]


def tiny_wan_transformer(seed=0, layers=2, heads=2, head_dim=32, text_dim=32, freq_dim=32, ffn=128):
    from diffusers import WanTransformer3DModel
    torch.manual_seed(seed)
    m = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
        in_channels=16, out_channels=16, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn,
        num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    with torch.no_grad():  # perturb everything so that no parameter sits at its init value
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def to_original_wan_state(model) -> dict:
    out = {}
    for k, v in model.state_dict().items():
        if k == "scale_shift_table":
            k = "head.modulation"
        else:
            for a, b in _DIFFUSERS_TO_ORIGINAL:
                k = k.replace(a, b)
        out[k] = v.clone()
    return out


def to_numpy(t):
    return t.detach().float().cpu().numpy()


def nchw_video(x: np.ndarray) -> torch.Tensor:
    """[B, F, H, W, C] numpy -> torch [B, C, F, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))


# A tiny diffusers AutoencoderKLWan: z_dim 16 as Wan (the DiT's channels), 8x spatial, 4x temporal.
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                temperal_downsample=[False, True, True])


def tiny_wan_vae(seed=0):
    from diffusers import AutoencoderKLWan
    torch.manual_seed(seed)
    return AutoencoderKLWan(**TINY_VAE).eval()


def tiny_umt5_dir(path, words=("a", "the", "shot", "city", "night", "rain", "cat"), d_model=32, seed=0):
    """A tiny transformers UMT5EncoderModel and a WordLevel tokenizer.json saved in `path`."""
    import tokenizers
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.UMT5Config(vocab_size=64, d_model=d_model, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                                  feed_forward_proj="gated-gelu", dropout_rate=0.0)
    transformers.UMT5EncoderModel(cfg).eval().save_pretrained(path)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(path / "tokenizer.json"))
    return path
