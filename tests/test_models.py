"""Tests for clipdg_nb.models / heads: tiny open_clip configs only, no downloads, CPU, < 60 s."""
import copy
import urllib.error
import warnings

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from torch import nn

from clipdg_nb import models as M
from clipdg_nb.data import prompt_functions, render_prompt
from clipdg_nb.models import ClipClassifier, fit_linear_probe

CLASSNAMES = ["cat", "dog", "airport", "owl", "river"]
TEMPLATES = prompt_functions(["a photo of a {}.", "a satellite image of {}.", "this is {article} {c}"])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return M.load_clip("clipdg-tiny-vit")


def _images(n=4, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _act(model):
    return type(model.visual.transformer.resblocks[0].mlp.gelu)


def test_tiny_configs_register_idempotently_and_forward():
    from open_clip.factory import _MODEL_CONFIG_PATHS
    M.register_tiny_configs()
    n_paths = len(_MODEL_CONFIG_PATHS)
    assert set(M.register_tiny_configs()) <= set(open_clip.list_models())
    assert len(_MODEL_CONFIG_PATHS) == n_paths
    for name, size in [("clipdg-tiny-vit", 32), ("clipdg-tiny-vit-64", 64)]:
        b = M.load_clip(name)
        assert b.image_size == size and b.model.visual.output_dim == 64 and not b.model.training
        assert b.tokenizer.context_length == 20 == open_clip.get_tokenizer(name).context_length
        tokens = b.tokenizer(["a photo of a cat"])
        assert tokens.shape == (1, 20)
        assert b.model.encode_image(_images(2, size)).shape == (2, 64)
        assert b.model.encode_text(tokens).shape == (1, 64)


def test_frozen_head_is_open_clip_zero_shot_classifier(tiny):
    """The zero-shot head is open_clip's builder, scaled by CLIP's temperature; the project's named
    `{c}` / `{article}` templates render like open_clip's callables."""
    ref = open_clip.build_zero_shot_classifier(tiny.model, tiny.tokenizer, CLASSNAMES, TEMPLATES,
                                               num_classes_per_batch=2)
    frozen = ClipClassifier.zero_shot(copy.deepcopy(tiny.model), tiny.tokenizer, CLASSNAMES, TEMPLATES,
                                      text_mode="frozen")
    torch.testing.assert_close(frozen.head.weight, tiny.model.logit_scale.exp().detach() * ref.T)
    torch.testing.assert_close(ref.norm(dim=0), torch.ones(len(CLASSNAMES)))
    assert render_prompt("a photo of {article} {c}.", "owl") == "a photo of an owl."
    assert TEMPLATES[2]("airport") == "this is an airport"


def test_classifier_modes_agree_at_init_and_interpolate(tiny):
    x = _images()
    trainable = ClipClassifier.zero_shot(copy.deepcopy(tiny.model), tiny.tokenizer, CLASSNAMES, TEMPLATES)
    frozen = ClipClassifier.zero_shot(copy.deepcopy(tiny.model), tiny.tokenizer, CLASSNAMES, TEMPLATES,
                                      text_mode="frozen")
    assert not hasattr(frozen, "clip")  # text tower dropped
    with torch.no_grad():
        logits = trainable(x)
        assert logits.shape == (4, len(CLASSNAMES))
        torch.testing.assert_close(logits, frozen(x), atol=1e-4, rtol=1e-4)
        with trainable.cached_text_features():
            torch.testing.assert_close(trainable(x), logits)
    # The trainable mode back-propagates into the text tower.
    trainable(x).logsumexp(1).sum().backward()
    assert trainable.clip.token_embedding.rows.grad.abs().sum() > 0
    # Same keys for a zero-shot and a "fine-tuned" classifier, all float: WiSE-FT interpolation works.
    start = {k: v.detach().clone() for k, v in trainable.state_dict().items()}
    with torch.no_grad():
        for p in trainable.parameters():
            p.add_(0.01)
    end = trainable.state_dict()
    assert start.keys() == end.keys() and all(v.is_floating_point() for v in end.values())
    trainable.load_state_dict({k: 0.5 * start[k] + 0.5 * end[k] for k in start})
    torch.testing.assert_close(trainable.clip.logit_scale.detach(), start["clip.logit_scale"] + 0.005)


def test_head_mode_from_linear_probe(tiny):
    W, b = torch.randn(3, 64), torch.randn(3)
    clf = ClipClassifier.from_linear_probe(tiny.model, W, b)
    x = _images()
    with torch.no_grad():
        expected = nn.functional.normalize(tiny.model.encode_image(x), dim=-1) @ W.T + b
        torch.testing.assert_close(clf(x), expected, atol=1e-5, rtol=1e-5)


def test_quick_gelu_forced_for_openai_without_download(monkeypatch):
    calls = []
    real_create = open_clip.create_model

    def fake_create(name, pretrained=None, **kw):  # build the tiny model instead of ViT-B-32
        calls.append((name, pretrained, kw["force_quick_gelu"]))
        return real_create("clipdg-tiny-vit", pretrained=None, force_quick_gelu=kw["force_quick_gelu"])

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", lambda cfg, cache_dir=None: "cached")
    monkeypatch.setattr(open_clip, "create_model", fake_create)
    b = M.load_clip("ViT-B/32", "openai")
    assert calls[-1] == ("ViT-B-32", "openai", True) and b.quick_gelu and _act(b.model) is QuickGELU
    b = M.load_clip("ViT-B-32", "laion2b_s34b_b79k")
    assert calls[-1][2] is False and _act(b.model) is nn.GELU
    monkeypatch.undo()
    assert _act(M.load_clip("clipdg-tiny-vit", quick_gelu=True).model) is QuickGELU
    assert _act(M.load_clip("clipdg-tiny-vit").model) is nn.GELU


def test_local_file_and_local_dir_round_trip(tiny, tmp_path):
    x = _images()
    with torch.no_grad():
        ref = tiny.model.encode_image(x)
    path = tmp_path / "tiny.safetensors"
    M.save_weights(tiny.model, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our tiny configs are never OpenAI weights: no QuickGELU warning
        b = M.load_clip("clipdg-tiny-vit", pretrained=path)
    with pytest.warns(UserWarning, match="quick_gelu=True"):  # a real model from a bare file does warn
        from clipdg_nb.models.clip import _quick_gelu_flag
        assert _quick_gelu_flag("ViT-B-32", "file", None, {}, None) is False
    with torch.no_grad():
        torch.testing.assert_close(b.model.encode_image(x), ref)
    # A pickle-free torch file works too (loaded with weights_only=True).
    torch.save(tiny.model.state_dict(), tmp_path / "tiny.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quick_gelu given explicitly: no warning
        b = M.load_clip("clipdg-tiny-vit", pretrained=str(tmp_path / "tiny.pt"), quick_gelu=False)
    with torch.no_grad():
        torch.testing.assert_close(b.model.encode_image(x), ref)
    # local-dir keeps the activation the weights need.
    qg = M.load_clip("clipdg-tiny-vit", quick_gelu=True)
    spec = M.save_local_dir(qg, tmp_path / "dir")
    b = M.load_clip(spec)
    assert _act(b.model) is QuickGELU and b.tokenizer.context_length == 20
    with torch.no_grad():
        torch.testing.assert_close(b.model.encode_image(x), qg.model.encode_image(x))
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        M.load_clip(f"local-dir:{tmp_path}")


def test_missing_weights_offline_gives_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError) as err:
        M.load_clip("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    msg = str(err.value)
    for part in ("ViT-B-32", "laion2b_s34b_b79k", str(tmp_path), "internet", "local-dir:", "pretrained='/path"):
        assert part in msg


def test_unknown_names_raise_value_error(tiny):
    with pytest.raises(ValueError, match="ViT-B-32"):
        M.load_clip("ViT-B-23")
    with pytest.raises(ValueError, match="neither a known tag"):
        M.load_clip("clipdg-tiny-vit", "no_such_tag")
    with pytest.raises(ValueError, match="pretrained must be None"):
        M.load_clip("local-dir:/nowhere", "openai")


def _blobs(n, n_classes=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    y = torch.randint(0, n_classes, (n,), generator=g)
    return centers[y] + torch.randn(n, dim, generator=g), y


def test_linear_probe_learns_and_selects_on_validation():
    (xt, yt), (xv, yv), (xs, ys) = _blobs(400, seed=0), _blobs(200, seed=1), _blobs(200, seed=2)
    probe = fit_linear_probe(xt, yt, xv, yv, n_classes=6, Cs=(1e-3, 0.1, 1.0), max_iter=100)  # classes 4, 5 absent
    assert probe.W.shape == (6, 16) and probe.b.shape == (6,)
    assert (probe.logits(xs).argmax(dim=1) == ys).float().mean() > 0.9  # chance is 0.25
    assert torch.isfinite(probe.b).all() and probe.logits(xs).argmax(dim=1).max() < 4
    assert probe.val_scores[probe.C] == max(probe.val_scores.values())
    # Selection follows the score on the validation labels only.
    seen = []

    def spy(y_true, y_pred):
        seen.append(y_true)
        return {0: 0.1, 1: 0.9, 2: 0.5}[len(seen) - 1]

    probe = fit_linear_probe(xt, yt, xv, yv, n_classes=6, Cs=(1.0, 1e-3, 0.1), score_fn=spy, max_iter=50)
    assert probe.C == 0.1 and len(seen) == 3 and all(torch.equal(s, yv) for s in seen)
    torch.testing.assert_close(nn.functional.normalize(xs, dim=-1) @ probe.W.T + probe.b, probe.logits(xs))


def test_encode_images_tensor_and_loader(tiny):
    x = _images(10)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.arange(10)), batch_size=3)
    tiny.model.train()
    f = M.encode_images(tiny.model, x, batch_size=4)
    assert tiny.model.training  # mode restored
    tiny.model.eval()
    f2 = M.encode_images(tiny.model, (x for x, _ in loader))
    torch.testing.assert_close(f, f2)
    assert f.shape == (10, 64)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(10))
    raw = M.encode_images(tiny.model.visual, x, normalize=False)
    torch.testing.assert_close(nn.functional.normalize(raw, dim=-1), f)
    w = torch.zeros(64, 2, requires_grad=True)
    (f @ w).sum().backward()  # usable in autograd (not an inference tensor)


def test_vision_only_tiny_offline(tiny, tmp_path, monkeypatch):
    for size in (32, 64):
        model = M.vision_only(7, arch="tiny", weights=None, image_size=size)
        assert model(_images(2, size)).shape == (2, 7) and model.features(_images(2, size)).shape == (2, 64)
        assert model.mean == M.IMAGENET_MEAN
    torch.nn.init.normal_(model.head.weight)
    M.save_weights(model, tmp_path / "v.safetensors")
    again = M.vision_only(7, arch="tiny", weights=tmp_path / "v.safetensors", image_size=64)
    x = _images(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    # ImageNet weights offline with an empty torch hub cache: a clear error, no model built.
    import torchvision.models._api as tv_api

    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(RuntimeError, match=r"vit_b_32.*Run once online"):
        M.vision_only(7, weights="imagenet")
    clipvis = M.vision_only(3, arch="clip-visual", clip=tiny)
    assert clipvis(_images(2)).shape == (2, 3) and clipvis.mean == tiny.mean


def test_save_weights_handles_shared_tensors(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = self.a  # the same parameters under two names
    src, dst = Tied(), Tied()
    M.save_weights(src, tmp_path / "t.safetensors")
    dst.load_state_dict(M.read_state_dict(tmp_path / "t.safetensors"))
    torch.testing.assert_close(dst.b.weight, src.a.weight)
    assert dst.a.weight is dst.b.weight
