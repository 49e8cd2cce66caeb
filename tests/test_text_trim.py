"""encode_text_trimmed == model.encode_text (features and gradients) on the real iWildCam prompts."""
from __future__ import annotations

import csv
from pathlib import Path

import open_clip
import pytest
import torch

from clipdg_nb.models.text import can_trim, encode_text_trimmed, trim_tokens

DATA = Path(__file__).resolve().parents[1] / "clipdg_nb" / "data_files"
FEATURE_ATOL = 1e-5  # the trimmed pass drops only exactly-masked keys; measured difference is 0.0
GRAD_RTOL = 1e-4     # max |g_full - g_trim| <= GRAD_RTOL * max |g_full|, per parameter

open_clip.add_model_config(DATA / "model_configs")


def iwildcam_prompts() -> list[str]:
    # read the label file directly: an independent source from the package's own loaders
    with open(DATA / "iwildcam_labels.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["y"]))
    return [f"this is a photo of {r['english']}" for r in rows]


PROMPTS = iwildcam_prompts()


def make(name: str, **kwargs):
    torch.manual_seed(0)
    return open_clip.create_model(name, pretrained=None, **kwargs).eval()


def tokens_for(name: str, prompts=PROMPTS) -> torch.Tensor:
    return open_clip.get_tokenizer(name)(prompts)


def transformer_lengths(model, fn):
    """Run fn() and return the sequence lengths the text transformer saw (proves the trim ran)."""
    seen = []
    handle = model.transformer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    try:
        out = fn()
    finally:
        handle.remove()
    return out, seen


def test_prompts_are_the_182_iwildcam_classes():
    assert len(PROMPTS) == 182
    assert PROMPTS[1] == "this is a photo of White-lipped peccary"


def test_trim_tokens_keeps_every_eot_and_drops_only_pads():
    tokens = tokens_for("ViT-B-32")
    eot = tokens.argmax(dim=-1)
    trimmed = trim_tokens(tokens)
    assert trimmed.shape == (182, int(eot.max()) + 1)
    assert trimmed.shape[1] < 77
    assert torch.equal(trimmed.argmax(dim=-1), eot)
    assert (tokens[:, trimmed.shape[1]:] == 0).all()
    assert trim_tokens(tokens, "first").shape[1] == 1
    assert torch.equal(trim_tokens(tokens, "eos", eos_id=int(tokens.max())), trimmed)


@pytest.mark.parametrize("name, kwargs", [
    ("ViT-B-32", {}),
    ("ViT-B-32", {"force_quick_gelu": True}),
    ("clipdg-tiny-vit", {}),
    ("clipdg-tiny-vit-64", {}),
])
def test_features_equal_full_encode_text(name, kwargs):
    model = make(name, **kwargs)
    tokens = tokens_for(name)
    assert tokens.shape[1] == model.positional_embedding.shape[0]
    with torch.no_grad():
        full = model.encode_text(tokens)
        trimmed, seen = transformer_lengths(model, lambda: encode_text_trimmed(model, tokens))
        trimmed_norm = encode_text_trimmed(model, tokens, normalize=True)
    full_norm = torch.nn.functional.normalize(full, dim=-1)  # what encode_text(normalize=True) does
    assert seen == [trim_tokens(tokens).shape[1]] and seen[0] < tokens.shape[1]
    assert trimmed.shape == full.shape == (182, model.text_projection.shape[1])
    assert (trimmed - full).abs().max().item() <= FEATURE_ATOL
    assert (trimmed_norm - full_norm).abs().max().item() <= FEATURE_ATOL


def test_a_cut_through_the_prompts_changes_the_features():
    """Negative control: the comparison above can fail. Cutting before the last EOT (what a
    wrong L would do) moves the pooled position and changes the features."""
    model = make("clipdg-tiny-vit")
    tokens = tokens_for("clipdg-tiny-vit")
    too_short = trim_tokens(tokens)[:, :-1]
    with torch.no_grad():
        full = model.encode_text(tokens)
        wrong = encode_text_trimmed(model, too_short)
    assert (wrong - full).abs().max().item() > 100 * FEATURE_ATOL


def assert_grads_equal(model, tokens, weights):
    params = {n: p for n, p in model.named_parameters() if not n.startswith("visual.")}
    grads = []
    for encode in (lambda: model.encode_text(tokens), lambda: encode_text_trimmed(model, tokens)):
        model.zero_grad(set_to_none=True)
        (encode() * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in params.items() if p.grad is not None})
    full, trimmed = grads
    assert full.keys() == trimmed.keys() and "token_embedding.weight" in full
    for n, g in full.items():
        scale = g.abs().max().item()
        assert (trimmed[n] - g).abs().max().item() <= GRAD_RTOL * max(scale, 1e-12), n


@pytest.mark.parametrize("name", ["clipdg-tiny-vit", "clipdg-tiny-vit-64"])
def test_gradients_equal_tiny(name):
    model = make(name).train()
    tokens = tokens_for(name)
    weights = torch.randn(182, model.text_projection.shape[1], generator=torch.Generator().manual_seed(1))
    assert_grads_equal(model, tokens, weights)


def test_gradients_equal_vit_b_32():
    # 24 prompts (every 8th, plus the longest) keep the full-context backward affordable on a CPU
    prompts = PROMPTS[::8] + [max(PROMPTS, key=len)]
    model = make("ViT-B-32").train()
    tokens = tokens_for("ViT-B-32", prompts)
    weights = torch.randn(len(prompts), 512, generator=torch.Generator().manual_seed(1))
    assert_grads_equal(model, tokens, weights)


def test_pretrimmed_tokens_give_the_same_features():
    model = make("clipdg-tiny-vit")
    tokens = tokens_for("clipdg-tiny-vit")
    with torch.no_grad():
        assert torch.allclose(encode_text_trimmed(model, trim_tokens(tokens)), model.encode_text(tokens),
                              atol=FEATURE_ATOL, rtol=0)


@pytest.mark.parametrize("pool", ["eos", "first"])
def test_other_trimmable_pools(pool):
    model = make("clipdg-tiny-vit")
    tokens = tokens_for("clipdg-tiny-vit")
    model.text_pool_type, model.text_eos_id = pool, int(tokens.max())
    assert can_trim(model)
    with torch.no_grad():
        trimmed, seen = transformer_lengths(model, lambda: encode_text_trimmed(model, tokens))
        full = model.encode_text(tokens)
    assert seen[0] == (1 if pool == "first" else trim_tokens(tokens).shape[1])
    assert (trimmed - full).abs().max().item() <= FEATURE_ATOL


def test_linear_text_projection():
    model = make("clipdg-tiny-vit")
    proj = torch.nn.Linear(64, 64)
    with torch.no_grad():
        proj.weight.copy_(model.text_projection.T)
        proj.bias.normal_()
    del model.text_projection  # a Parameter slot cannot take a module
    model.text_projection = proj
    tokens = tokens_for("clipdg-tiny-vit")
    with torch.no_grad():
        trimmed, seen = transformer_lengths(model, lambda: encode_text_trimmed(model, tokens))
        assert seen[0] < tokens.shape[1]
        assert (trimmed - model.encode_text(tokens)).abs().max().item() <= FEATURE_ATOL


def test_bfloat16_weights_follow_cast_dtype():
    model = make("clipdg-tiny-vit").to(torch.bfloat16)
    tokens = tokens_for("clipdg-tiny-vit")
    with torch.no_grad():
        trimmed = encode_text_trimmed(model, tokens)
        full = model.encode_text(tokens)
    assert trimmed.dtype == full.dtype == torch.bfloat16
    # bf16 keeps 8 bits: allow a few ulps of the feature scale for different matmul blocking
    assert (trimmed.float() - full.float()).abs().max().item() <= 0.05 * full.float().abs().max().item()


def fallback_cases():
    last = make("clipdg-tiny-vit")
    last.text_pool_type = "last"  # pools position -1, which sees every pad
    bidirectional = make("clipdg-tiny-vit")
    bidirectional.attn_mask = torch.zeros_like(bidirectional.attn_mask)  # not causal
    no_mask = make("clipdg-tiny-vit")
    no_mask.attn_mask = None
    custom = make("clipdg-tiny-vit", force_custom_text=True)  # CustomTextCLIP
    return {"last": last, "bidirectional": bidirectional, "no_mask": no_mask, "custom_text": custom}


@pytest.mark.parametrize("case", ["last", "bidirectional", "no_mask", "custom_text"])
def test_falls_back_to_encode_text(case):
    model = fallback_cases()[case]
    tokens = tokens_for("clipdg-tiny-vit")
    assert not can_trim(model)
    with torch.no_grad():
        out = encode_text_trimmed(model, tokens)
        assert torch.equal(out, model.encode_text(tokens))


def test_non_causal_mask_would_have_mattered():
    """The bidirectional fallback is needed: trimming such a model changes its features."""
    model = fallback_cases()["bidirectional"]
    tokens = tokens_for("clipdg-tiny-vit")
    length = trim_tokens(tokens).shape[1]
    with torch.no_grad():
        x = model.token_embedding(tokens[:, :length]) + model.positional_embedding[:length]
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
        cut = x[torch.arange(len(tokens)), tokens[:, :length].argmax(-1)] @ model.text_projection
        full = model.encode_text(tokens)
    assert (cut - full).abs().max().item() > 100 * FEATURE_ATOL
