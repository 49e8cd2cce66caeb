"""L2-SP (`losses.l2sp`, method `l2sp`): its penalty and gradient against a hand computation, and
alpha 0 is exactly plain fine-tuning."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from clipdg_nb import methods, train
from clipdg_nb.config import METHODS, FinetuneConfig, sweep_configs
from clipdg_nb.images import Normalize
from clipdg_nb.losses import LOSSES, backbone_parameters, cross_entropy
from test_train import _tiny_setup


class Toy(nn.Module):
    """A backbone (`visual`, pre-trained) and a new head (`head`), as ClipClassifier's frozen mode."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(2, 2, bias=False)
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.visual.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
            self.head.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.5]]))

    def forward(self, x):
        return self.head(self.visual(x))


def test_penalty_and_gradient_equal_a_hand_computation():
    model = Toy()
    loss_fn = LOSSES["l2sp"](model, SimpleNamespace(l2sp_alpha=0.3))  # w0 = the weights now
    with torch.no_grad():  # move away from w0: visual by a known step, the head by another
        model.visual.weight += torch.tensor([[0.5, -1.0], [0.0, 2.0]])
        model.head.weight += torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    loss = loss_fn(model, x, y)
    # by hand: 0.3 / 2 * (0.25 + 1 + 0 + 4) = 0.7875; the head's move is not penalised
    ce = cross_entropy(model, x, y)
    assert abs((loss - ce).item() - 0.7875) < 1e-6
    loss.backward()
    visual_grad, head_grad = model.visual.weight.grad.clone(), model.head.weight.grad.clone()
    model.zero_grad()
    cross_entropy(model, x, y).backward()
    # d/dw alpha/2 ||w - w0||^2 = alpha (w - w0) on the backbone, nothing on the head
    assert torch.allclose(visual_grad - model.visual.weight.grad, torch.tensor([[0.15, -0.3], [0.0, 0.6]]), atol=1e-6)
    assert torch.equal(head_grad, model.head.weight.grad)


def test_alpha_zero_is_plain_fine_tuning_and_alpha_pulls_toward_init(easy_root):
    norm = Normalize((0.5,) * 3, (0.5,) * 3)
    finals = {}
    for name, alpha in (("ce", None), ("l2sp0", 0.0), ("l2sp", 50.0)):
        model, images, groups, cfg = _tiny_setup(easy_root, epochs=2, swa=False, ema_decay=None)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        loss_fn = cross_entropy if alpha is None else LOSSES["l2sp"](model, SimpleNamespace(l2sp_alpha=alpha))
        out = train.fit(model, images, groups, cfg, normalize=norm, device=torch.device("cpu"),
                        evaluate=lambda m: (0.0, {}), progress=False, loss_fn=loss_fn)
        finals[name] = out.last_state
    assert all(torch.equal(finals["ce"][k], finals["l2sp0"][k]) for k in finals["ce"])

    def dist(state):
        return sum(float((state[k].float() - start[k].float()).pow(2).sum()) for k in start
                   if k.startswith("backbone.") and torch.is_floating_point(start[k]))
    assert dist(finals["l2sp"]) < 0.5 * dist(finals["ce"])  # a strong pull keeps the backbone near w0


def test_l2sp_is_one_spec_that_reads_its_alpha():
    spec = METHODS["l2sp"]
    assert spec.loss == "l2sp" and spec.end_to_end and spec.has_lr
    ident = FinetuneConfig(method="l2sp", l2sp_alpha=0.5).validate().identity()
    assert ident["l2sp_alpha"] == 0.5
    assert "l2sp_alpha" not in FinetuneConfig(method="finetune").validate().identity()
    np.testing.assert_raises(ValueError, FinetuneConfig(method="l2sp", l2sp_alpha=-1.0).validate)


def test_alphas_are_swept_like_lrs():
    cfgs = sweep_configs({"epochs": 2, "swa_last_k": 1, "l2sp_alphas": [0.01, 1.0]}, ["finetune", "l2sp"], [1e-4, 1e-5])
    assert [(c.method, c.lr, c.l2sp_alpha if c.method == "l2sp" else None) for c in cfgs] == [
        ("finetune", 1e-4, None), ("finetune", 1e-5, None),
        ("l2sp", 1e-4, 0.01), ("l2sp", 1e-4, 1.0), ("l2sp", 1e-5, 0.01), ("l2sp", 1e-5, 1.0)]
    assert len({c.identity()["l2sp_alpha"] for c in cfgs if c.method == "l2sp"}) == 2
    with np.testing.assert_raises(ValueError):
        sweep_configs({"l2sp_alphas": 0.1}, ["l2sp"], [1e-4])


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_weight_decay_on_the_head_only_and_one_step_by_hand(optimizer):
    """L2-SP as published: the backbone is pulled toward w0 by the loss, not also toward zero by the
    optimizer's weight decay, which acts on the new head only."""
    model = Toy()
    cfg = SimpleNamespace(optimizer=optimizer, lr=0.1, weight_decay=0.5, l2sp_alpha=0.3)
    loss_fn = LOSSES["l2sp"](model, cfg)
    opt = train.make_optimizer(cfg, model.parameters(), backbone_parameters(model))
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay == {id(model.visual.weight): 0.0, id(model.head.weight): 0.5}
    with torch.no_grad():
        model.visual.weight += torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    w0 = torch.eye(2)
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    visual, head = model.visual.weight.detach().clone(), model.head.weight.detach().clone()
    ce_visual, ce_head = torch.autograd.grad(cross_entropy(model, x, y), [model.visual.weight, model.head.weight])
    opt.zero_grad()
    loss_fn(model, x, y).backward()
    opt.step()
    # Adam's first step is lr * g / (|g| + eps) (bias-corrected moments: m = g, v = g^2); L2 (adam)
    # adds wd * w to the head's gradient, decoupled decay (adamw) shrinks the head by lr * wd first.
    g_visual = ce_visual + 0.3 * (visual - w0)
    g_head = ce_head + (0.5 * head if optimizer == "adam" else 0)
    shrink = 1 - 0.1 * 0.5 if optimizer == "adamw" else 1
    assert torch.allclose(model.visual.weight, visual - 0.1 * g_visual / (g_visual.abs() + 1e-8), atol=1e-6)
    assert torch.allclose(model.head.weight, shrink * head - 0.1 * g_head / (g_head.abs() + 1e-8), atol=1e-6)


def test_l2sp_run_decays_the_head_only(easy_root, run_kwargs, monkeypatch):
    made = []
    real = train.make_optimizer

    def spy(cfg, params, no_decay=()):
        made.append(real(cfg, params, no_decay))
        return made[-1]
    monkeypatch.setattr(train, "make_optimizer", spy)
    # text_mode='frozen': a head (the zero-shot weights as a new layer); 'trainable' has none, so nothing decays
    common = dict(root_dir=str(easy_root), lr=1e-3, epochs=1, swa=False, fraction=0.5, weight_decay=0.05,
                  text_mode="frozen", **run_kwargs)
    plain = methods.run(FinetuneConfig(method="finetune", **common), progress=False)
    l2sp = methods.run(FinetuneConfig(method="l2sp", l2sp_alpha=0.0, **common), progress=False)
    assert l2sp["run_id"] != plain["run_id"] and l2sp["tuned"] == {"l2sp_alpha": 0.0}
    assert l2sp["identity"]["weight_decay_on"] == "head" and "weight_decay_on" not in plain["identity"]
    assert [g["weight_decay"] for g in made[0].param_groups] == [0.05]  # finetune: everything decays
    head, backbone = made[1].param_groups
    assert head["weight_decay"] == 0.05 and backbone["weight_decay"] == 0.0
    assert len(head["params"]) == 2 and all(p.ndim in (1, 2) for p in head["params"])  # head.weight, head.bias
    assert len(backbone["params"]) == sum(len(g["params"]) for g in made[0].param_groups) - 2
