"""The training losses a method spec names (`config.MethodSpec.loss`), and their per-step hooks.

`LOSSES`: name -> builder `(model at its initial weights, cfg) -> loss_fn(step_model, images, labels)`,
called by `train.fit` every step on the (DDP / compiled) module. `AFTER_STEP`: name -> `hook(model)`,
run after each optimizer step.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100)  # open_clip's training clamps logit_scale to [0, ln 100] after each step


def cross_entropy(step_model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(step_model(x).float(), y)


def flyp_loss(image_features: torch.Tensor, class_features: torch.Tensor, targets: torch.Tensor,
              logit_scale: torch.Tensor) -> torch.Tensor:
    """FLYP (Goyal et al. 2023): the symmetric CLIP loss between L2-normalised images [B, D] and their
    batch's *distinct* class prompts [K, D] (targets [B]: each image's row). With 62-182 classes and
    batches of 128, repeated prompts would add log(k) priors and false negatives, so text -> image
    spreads each prompt's target evenly over its images; without repeats this is open_clip's `ClipLoss`.
    Under DDP the negatives are each rank's own batch, so the loss depends on the number of ranks."""
    logits = logit_scale.exp() * image_features @ class_features.T  # [B, K]
    image_to_text = F.cross_entropy(logits, targets)
    positives = F.one_hot(targets, class_features.shape[0]).T.to(logits.dtype)  # [K, B]
    text_to_image = F.cross_entropy(logits.T, positives / positives.sum(dim=1, keepdim=True))
    return (image_to_text + text_to_image) / 2


def flyp_objective(step_model, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    image_features, class_features, targets, logit_scale = step_model(images, labels=labels)
    return flyp_loss(image_features.float(), class_features.float(), targets, logit_scale.float())


def clamp_logit_scale(model) -> None:
    """FLYP's after-step hook: the temperature stays within CLIP's training range."""
    with torch.no_grad():
        model.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def backbone_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable pre-trained parameters: all but the new head (`head.*`)."""
    return [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("head.")]


def l2sp(model: torch.nn.Module, cfg) -> Callable[..., torch.Tensor]:
    """L2-SP (Li et al. 2018): cross-entropy + `cfg.l2sp_alpha` / 2 * ||w - w0||^2 over
    `backbone_parameters`, w0 the weights as the method built them. The new head gets plain L2 (Li et
    al.'s beta) from the optimizer's weight decay instead (the spec's `weight_decay_on='head'`), so
    the backbone is pulled toward w0 and not also toward zero."""
    params = backbone_parameters(model)
    anchors = [p.detach().float().clone() for p in params]
    alpha = float(cfg.l2sp_alpha)

    def loss_fn(step_model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if anchors and anchors[0].device != params[0].device:  # `fit` moved the model after it was built
            anchors[:] = [a.to(p.device) for p, a in zip(params, anchors)]
        penalty = sum((p.float() - a).pow(2).sum() for p, a in zip(params, anchors))
        return cross_entropy(step_model, x, y) + alpha / 2 * penalty
    return loss_fn


LossBuilder = Callable[[torch.nn.Module, object], Callable[..., torch.Tensor]]
LOSSES: dict[str, LossBuilder] = {
    "cross_entropy": lambda model, cfg: cross_entropy,
    "flyp": lambda model, cfg: flyp_objective,
    "l2sp": l2sp,
}
AFTER_STEP: dict[str, Callable[[torch.nn.Module], None]] = {
    "clamp_logit_scale": clamp_logit_scale,
}
