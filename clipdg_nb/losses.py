"""The training losses a method spec names (`config.MethodSpec.loss`), and their per-step hooks.

`LOSSES` maps a name to a builder `(model, cfg) -> loss_fn` (the model at its initial weights, also
on resume); `train.fit` calls `loss_fn(step_model, images, labels) -> loss` every step on the (DDP /
compiled) module. `AFTER_STEP` maps a name to `hook(model)`, run after each optimizer step.

FLYP (Goyal et al. 2023): fine-tune both CLIP towers with the pretraining contrastive loss between
each image and its class prompt, then classify with the zero-shot head rebuilt from the fine-tuned
text tower. A batch's prompts are deduplicated, because with 62-182 classes and batches of 128
repeats are the rule: duplicate prompts would add log(k) priors and false negatives. Deduplicated,
image -> text is a cross-entropy over the batch's distinct classes and text -> image spreads each
prompt's target evenly over its images; without repeats it equals open_clip's `ClipLoss`. Class
embeddings are the templates' mean (the evaluated head). Under DDP the negatives are each rank's
own batch, so the loss depends on the number of ranks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from typing import Callable

MAX_LOGIT_SCALE = math.log(100)  # open_clip's training clamps logit_scale to [0, ln 100] after each step


def cross_entropy(step_model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy over the model's logits (the study's fine-tuning)."""
    return F.cross_entropy(step_model(x).float(), y)


def flyp_loss(image_features: torch.Tensor, class_features: torch.Tensor, targets: torch.Tensor,
              logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss between images and their batch's distinct class prompts.

    image_features [B, D] and class_features [K, D] L2-normalised; targets [B]: each image's row of
    class_features (every row is some image's class); logit_scale: the log temperature (learned).
    (cross-entropy image -> text over the K prompts + cross-entropy text -> image over the B images
    with the target spread evenly over the prompt's images) / 2.
    """
    logits = logit_scale.exp() * image_features @ class_features.T  # [B, K]
    image_to_text = F.cross_entropy(logits, targets)
    positives = F.one_hot(targets, class_features.shape[0]).T.to(logits.dtype)  # [K, B]
    text_to_image = F.cross_entropy(logits.T, positives / positives.sum(dim=1, keepdim=True))
    return (image_to_text + text_to_image) / 2


def flyp_objective(step_model, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`train.fit`'s loss hook for FLYP: one forward of the (DDP / compiled) trainable ClipClassifier."""
    image_features, class_features, targets, logit_scale = step_model(images, labels=labels)
    return flyp_loss(image_features.float(), class_features.float(), targets, logit_scale.float())


def clamp_logit_scale(model) -> None:
    """`train.fit`'s after-step hook for FLYP: the temperature stays within CLIP's training range."""
    with torch.no_grad():
        model.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def l2sp(model: torch.nn.Module, cfg) -> Callable[..., torch.Tensor]:
    """L2-SP (Li et al. 2018, "Explicit inductive bias for transfer learning with convolutional
    networks"): cross-entropy + alpha / 2 * ||w - w0||^2, alpha = `cfg.l2sp_alpha`, w0 the
    pre-trained weights as the method built the model (before any step; also when `fit` resumes).

    Pulled toward w0: `backbone_parameters`. The linear head of text_mode='frozen' (`head.*`, the
    zero-shot weights as a new layer) is not: Li et al. treat new layers with plain L2 (their beta),
    the optimizer's weight decay, which acts on the head only (the spec's `weight_decay_on='head'`),
    so the backbone is pulled toward w0 and not also toward zero. alpha 0 is fine-tuning without
    weight decay on the backbone.
    """
    params = backbone_parameters(model)
    anchors = [p.detach().float().clone() for p in params]
    alpha = float(cfg.l2sp_alpha)

    def loss_fn(step_model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if anchors and anchors[0].device != params[0].device:  # `fit` moved the model after it was built
            anchors[:] = [a.to(p.device) for p, a in zip(params, anchors)]
        return cross_entropy(step_model, x, y) + alpha / 2 * l2sp_penalty(params, anchors)
    return loss_fn


def backbone_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable pre-trained parameters: all but the new head (`head.*`): the image tower, and in
    text_mode='trainable' the text tower and the temperature too. Frozen ones (train_blocks) never move."""
    return [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("head.")]


def l2sp_penalty(params, anchors) -> torch.Tensor:
    """||w - w0||^2 summed over the parameters, in float32."""
    return sum((p.float() - a).pow(2).sum() for p, a in zip(params, anchors))


LossBuilder = Callable[[torch.nn.Module, object], Callable[..., torch.Tensor]]
LOSSES: dict[str, LossBuilder] = {
    "cross_entropy": lambda model, cfg: cross_entropy,
    "flyp": lambda model, cfg: flyp_objective,
    "l2sp": l2sp,
}
AFTER_STEP: dict[str, Callable[[torch.nn.Module], None]] = {
    "clamp_logit_scale": clamp_logit_scale,
}
