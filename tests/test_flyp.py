"""FLYP (contrastive fine-tuning, method 'flyp') and partial fine-tuning (train_blocks)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from open_clip.loss import ClipLoss

from clipdg_nb import methods, train
from clipdg_nb.config import METHODS, TRAINED_METHODS, FinetuneConfig, sweep_configs
from clipdg_nb.data import load_dataset, split_indices
from clipdg_nb.losses import MAX_LOGIT_SCALE, clamp_logit_scale, flyp_loss, flyp_objective
from clipdg_nb.images import Normalize, image_split
from clipdg_nb.models import ClipClassifier, load_clip, vision_only
from clipdg_nb.models.partial import train_last_blocks

CHANCE = 1 / 62
I = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])  # 4 images, unit norm
C = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.6, 0.8]])  # 3 class prompts, unit norm


def test_flyp_loss_by_hand_with_a_repeated_class():
    # Labels [0, 1, 1, 2]: class 1 twice; its prompt appears once (deduplicated).
    # Dot products I @ C.T, times exp(log 2) = 2:
    logits = 2 * torch.tensor([[1.0, 0.0, -0.6],
                               [0.0, 1.0, 0.8],
                               [0.6, 0.8, 0.28],
                               [-1.0, 0.0, 0.6]])
    ls = torch.log_softmax
    image_to_text = -(ls(logits[0], 0)[0] + ls(logits[1], 0)[1] + ls(logits[2], 0)[1] + ls(logits[3], 0)[2]) / 4
    columns = logits.T  # each prompt against the 4 images
    text_to_image = -(ls(columns[0], 0)[0]  # class 0: image 0
                      + (ls(columns[1], 0)[1] + ls(columns[1], 0)[2]) / 2  # class 1: images 1, 2 averaged
                      + ls(columns[2], 0)[3]) / 3  # class 2: image 3
    hand = (image_to_text + text_to_image) / 2
    got = flyp_loss(I, C, torch.tensor([0, 1, 1, 2]), torch.tensor(math.log(2)))
    assert got.item() == pytest.approx(hand.item(), rel=1e-6)


def test_flyp_loss_by_hand_without_repeats_is_open_clips_clip_loss():
    images, prompts = I[:3], C  # image i has class i
    logits = 2 * images @ prompts.T
    hand = (sum(-torch.log_softmax(logits[i], 0)[i] for i in range(3)) / 3
            + sum(-torch.log_softmax(logits.T[i], 0)[i] for i in range(3)) / 3) / 2
    got = flyp_loss(images, prompts, torch.arange(3), torch.tensor(math.log(2)))
    assert got.item() == pytest.approx(hand.item(), rel=1e-6)
    # Classes out of order: the prompts are the batch's distinct classes in sorted order.
    order = torch.tensor([2, 0, 1])
    assert flyp_loss(images[order], prompts, order, torch.tensor(math.log(2))).item() == pytest.approx(hand.item(), rel=1e-6)
    assert ClipLoss()(images, prompts, torch.tensor(2.0)).item() == pytest.approx(hand.item(), rel=1e-6)


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    bundle = load_clip("clipdg-tiny-vit", None, device="cpu")
    templates = [lambda c: f"a photo of a {c}.", lambda c: f"a satellite image of {c}"]
    return bundle, ClipClassifier.zero_shot(bundle.model, bundle.tokenizer, ["airport", "dam", "road", "park"],
                                            templates)


def test_batch_class_embeddings_are_the_evaluated_head(tiny_clip):
    bundle, clf = tiny_clip
    labels = torch.tensor([3, 1, 1, 3, 0])
    with torch.no_grad():
        feats, targets = clf.batch_class_features(labels)
        head = clf.text_features()  # the zero-shot head the classifier evaluates with (2 templates averaged)
    assert torch.equal(targets, torch.tensor([2, 1, 1, 2, 0]))
    assert torch.allclose(feats, head[[0, 1, 3]], atol=1e-6)
    x = torch.randn(5, 3, bundle.image_size, bundle.image_size)
    img, cls, tgt, scale = clf(x, labels=labels)
    assert scale is clf.clip.logit_scale
    with torch.no_grad():
        assert torch.allclose(flyp_objective(clf, x, labels), flyp_loss(img, cls, tgt, scale), atol=1e-6)


def test_logit_scale_is_clamped_like_open_clip(tiny_clip):
    _, clf = tiny_clip
    saved = clf.clip.logit_scale.detach().clone()
    with torch.no_grad():
        clf.clip.logit_scale.fill_(6.0)
    clamp_logit_scale(clf)
    assert clf.clip.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    with torch.no_grad():
        clf.clip.logit_scale.copy_(saved)


def test_flyp_learns_and_writes_every_variant(easy_root, run_kwargs):
    cfg = FinetuneConfig(root_dir=str(easy_root), method="flyp", text_mode="frozen", lr=1e-3, epochs=12,
                         scheduler="cosine", optimizer="adamw", swa_last_k=3, ema_decay=0.9, wise_alphas=(0.5,),
                         **run_kwargs)
    assert "text_mode" not in cfg.validate().identity()  # FLYP trains both towers, whatever text_mode says
    record = methods.run(cfg, progress=False)
    assert set(record["variants"]) == {"best", "last", "swa", "ema", "wise_ft_0.5"}
    assert record["method"] == "flyp" and record["selection"]["split"] == "id_val"
    losses = [h["train_loss"] for h in record["history"]]
    assert losses[-1] < 0.9 * losses[0]
    # Random init (pretrained=None): the loss sits near log(classes in a batch) for ~5 epochs, then falls.
    # id_test has 310 images, chance is 5; measured at seeds 0 / 1 / 2: 48 / 149 / 24 correct, last loss
    # over first 0.61 / 0.29 / 0.69.
    assert record["metrics"]["id_test"]["acc_avg"] > 3 * CHANCE, record["metrics"]


def test_flyp_is_a_sweep_method():
    assert "flyp" in TRAINED_METHODS and METHODS["flyp"].end_to_end and METHODS["flyp"].loss == "flyp"
    cfgs = sweep_configs({"epochs": 2, "swa_last_k": 1}, ["finetune", "flyp"], [1e-4, 1e-5])
    assert [(c.method, c.lr) for c in cfgs] == [("finetune", 1e-4), ("finetune", 1e-5), ("flyp", 1e-4), ("flyp", 1e-5)]


# -- partial fine-tuning ---------------------------------------------------------------------------

def trainable_names(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _visual(names, prefix):
    return sorted({n[len(prefix):].split(".")[0] if "resblocks" not in n else "block" + n.split("resblocks.")[1][0]
                   for n in names if n.startswith(prefix)})


@pytest.mark.parametrize("k,tower", [
    (0, []), (1, ["block1", "ln_post", "proj"]),
    (2, ["block0", "block1", "class_embedding", "conv1", "ln_post", "ln_pre", "positional_embedding", "proj"]),
    (None, ["block0", "block1", "class_embedding", "conv1", "ln_post", "ln_pre", "positional_embedding", "proj"])])
def test_train_blocks_trainable_parameters_open_clip(k, tower):
    torch.manual_seed(0)
    bundle = load_clip("clipdg-tiny-vit", None, device="cpu")
    clf = train_last_blocks(ClipClassifier.zero_shot(bundle.model, bundle.tokenizer, ["a", "b"], [str]), k)
    names = trainable_names(clf)
    assert _visual(names, "clip.visual.") == tower
    assert "clip.logit_scale" in names and any(n.startswith("clip.transformer.") for n in names)  # text tower trains
    torch.manual_seed(0)
    bundle = load_clip("clipdg-tiny-vit", None, device="cpu")
    frozen_text = train_last_blocks(ClipClassifier.zero_shot(bundle.model, bundle.tokenizer, ["a", "b"], [str],
                                                             text_mode="frozen"), k)
    assert _visual(trainable_names(frozen_text), "visual.") == tower
    assert {"head.weight", "head.bias"} <= set(trainable_names(frozen_text))


@pytest.mark.parametrize("k,tower", [(0, []), (1, ["encoder.layers.encoder_layer_1", "encoder.ln"]), (None, "all")])
def test_train_blocks_trainable_parameters_torchvision(k, tower):
    model = train_last_blocks(vision_only(62, arch="tiny", image_size=32), k)
    names = trainable_names(model)
    assert {"head.weight", "head.bias"} <= set(names)
    backbone = [n[len("backbone."):] for n in names if n.startswith("backbone.")]
    if tower == "all":
        assert len(backbone) == len(list(model.backbone.parameters()))
    else:
        assert sorted({".".join(n.split(".")[:3]) if n.startswith("encoder.layers") else ".".join(n.split(".")[:2])
                       for n in backbone}) == tower


def test_train_blocks_beyond_the_model_is_refused_by_name():
    with pytest.raises(ValueError, match="train_blocks=3 exceeds the 2 transformer blocks"):
        train_last_blocks(vision_only(62, arch="tiny", image_size=32), 3)
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="train_blocks"):
            FinetuneConfig(train_blocks=bad).validate()
    assert FinetuneConfig(train_blocks=1).validate().identity()["train_blocks"] == 1
    assert FinetuneConfig(train_blocks=0).validate().identity() != FinetuneConfig().validate().identity()
    assert "train_blocks" not in FinetuneConfig().validate().identity()  # None (all): run ids as before the knob
    assert "train_blocks" not in FinetuneConfig(method="linear_probe", train_blocks=1).validate().identity()


@pytest.mark.parametrize("method", ["vision_only", "flyp"])
def test_frozen_parameters_do_not_change_in_a_short_fit(easy_root, method):
    ds = load_dataset("fmow", easy_root)
    idx = split_indices(ds, "train")[:96]
    cfg = FinetuneConfig(root_dir=str(easy_root), method=method, lr=1e-3, epochs=2, swa_last_k=1, batch_size=32,
                         train_blocks=1, vision_arch="tiny", vision_weights=None, pretrained=None).validate()
    torch.manual_seed(0)
    if method == "vision_only":
        model = vision_only(62, arch="tiny", image_size=32)
    else:
        bundle = load_clip("clipdg-tiny-vit", None, device="cpu")
        model = ClipClassifier.zero_shot(bundle.model, bundle.tokenizer, [f"class {i}" for i in range(62)], [str])
    train_last_blocks(model, cfg.train_blocks)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train.fit(model, image_split(ds, idx, 32, cache_dir=None), np.asarray(ds.metadata_array[idx, 0]), cfg,
              normalize=Normalize((0.5,) * 3, (0.5,) * 3), device=torch.device("cpu"),
              evaluate=lambda m: (0.0, {}), progress=False,
              **({"loss_fn": flyp_objective, "after_step": clamp_logit_scale} if method == "flyp" else {}))
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    frozen = {n for n, p in after.items() if not p.requires_grad}
    assert frozen and not changed & frozen
    assert {n for n in changed if "layers.encoder_layer_1" in n or "resblocks.1" in n}  # the last block moved
