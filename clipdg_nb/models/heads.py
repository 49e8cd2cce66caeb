"""CLIP as an image classifier: the zero-shot head (open_clip's `build_zero_shot_classifier` over
open_clip-style template callables) and the module that fine-tunes. Prompts go through the text
tower on their first L tokens only (`models.text`): the same embeddings, several times cheaper."""
from __future__ import annotations

import contextlib
from functools import partial
from types import SimpleNamespace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip import build_zero_shot_classifier
from torch import nn

from .text import encode_text_trimmed, train_used_rows, trim_tokens

def tokenize_prompts(tokenizer, classnames: Sequence[str], templates: Sequence[Callable[[str], str]]) -> torch.Tensor:
    """Token ids [C*T, L], class-major (all templates of class 0, then class 1, ...) like open_clip,
    cut after the last end-of-text token (on the CPU, so no device sync is needed later)."""
    return trim_tokens(tokenizer([template(c) for c in classnames for template in templates]))


def identical_prompt_classes(tokenizer, classnames: Sequence[str], templates: Sequence[Callable[[str], str]]) -> list[list[int]]:
    """Groups of classes (lowest first) whose prompts are token for token the same (CLIP's tokenizer
    lowercases): their logits tie on every image, so only the lowest is ever predicted."""
    tokens = tokenize_prompts(tokenizer, classnames, templates).reshape(len(classnames), -1)
    inverse = torch.unique(tokens, dim=0, return_inverse=True)[1]
    groups = ((inverse == i).nonzero().flatten().tolist() for i in inverse.unique())
    return sorted(g for g in groups if len(g) > 1)


def class_text_embeddings(model, tokens: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class embeddings [C, D] by open_clip's zero-shot recipe (normalise, average over templates,
    renormalise), differentiably."""
    emb = encode_text_trimmed(model, tokens, normalize=True)
    emb = emb.reshape(n_classes, tokens.shape[0] // n_classes, -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


class ClipClassifier(nn.Module):
    """`forward(images) -> logits [N, C]` on normalised image features, in one of three modes:
    "trainable": both towers train, exp(logit_scale) * img @ text.T with the prompts embedded every
    forward (only the token rows they read train, `models.text.UsedRowsEmbedding`); "frozen": a
    linear head initialised to exp(logit_scale) * the zero-shot weights; "head": a given linear head
    (linear probe, LP-FT). The model's modules are taken, not copied. Within one mode the state-dict
    keys never change, so weights interpolate key by key (WiSE-FT)."""

    def __init__(self, model, *, text_mode: str = "trainable", tokenizer=None, classnames=None, templates=None,
                 head_weight: torch.Tensor | None = None, head_bias: torch.Tensor | None = None):
        super().__init__()
        self.text_mode = text_mode
        self._text_cache: torch.Tensor | None = None
        device = model.logit_scale.device
        if text_mode == "trainable":
            self.clip = model
            # Not persistent: the state dict stays all-float (interpolable) and identical across runs.
            self.register_buffer("prompt_tokens", tokenize_prompts(tokenizer, classnames, templates).to(device),
                                 persistent=False)
            train_used_rows(model, self.prompt_tokens)  # the prompts read a few hundred of 49,408 token rows
            self.n_classes = len(classnames)
            return
        self.visual = model.visual
        if text_mode == "frozen":
            trimmed = SimpleNamespace(encode_text=partial(encode_text_trimmed, model))  # for open_clip's builder
            zero_shot = build_zero_shot_classifier(trimmed, tokenizer, classnames, templates, device=device)
            head_weight = model.logit_scale.exp().detach() * zero_shot.T
        head_weight = torch.as_tensor(head_weight).detach().float()
        n_classes, dim = head_weight.shape
        self.head = nn.Linear(dim, n_classes)
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
            self.head.bias.copy_(torch.zeros(n_classes) if head_bias is None else torch.as_tensor(head_bias))
        self.head.to(device)
        self.n_classes = n_classes

    @classmethod
    def zero_shot(cls, model, tokenizer, classnames, templates, text_mode: str = "trainable") -> "ClipClassifier":
        """The zero-shot classifier (the fine-tuning start point) in `trainable` or `frozen` mode."""
        return cls(model, text_mode=text_mode, tokenizer=tokenizer, classnames=classnames, templates=templates)

    @classmethod
    def from_linear_probe(cls, model, W: torch.Tensor, b: torch.Tensor | None = None) -> "ClipClassifier":
        """Image tower + a given linear head (W [C, D], b [C]) on normalised image features."""
        return cls(model, text_mode="head", head_weight=W, head_bias=b)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features [N, D]."""
        visual = self.clip.visual if self.text_mode == "trainable" else self.visual
        return F.normalize(visual(images), dim=-1)

    def text_features(self) -> torch.Tensor:
        """Class embeddings [C, D] of the trainable mode (computed once inside `cached_text_features`)."""
        cached = self._text_cache
        return cached if cached is not None else class_text_embeddings(self.clip, self.prompt_tokens, self.n_classes)

    @contextlib.contextmanager
    def cached_text_features(self):
        """For evaluation: embed the prompts once for the whole block instead of every batch."""
        if self.text_mode == "trainable":
            with torch.no_grad():
                self._text_cache = class_text_embeddings(self.clip, self.prompt_tokens, self.n_classes)
        try:
            yield self
        finally:
            self._text_cache = None

    def batch_class_features(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [K, D] of the K distinct classes in `labels` (only their prompts through the
        text tower) and each label's row in them [B]."""
        classes, targets = torch.unique(labels, return_inverse=True)
        per_class = self.prompt_tokens.shape[0] // self.n_classes
        rows = (classes[:, None] * per_class + torch.arange(per_class, device=classes.device)).reshape(-1)
        return class_text_embeddings(self.clip, self.prompt_tokens[rows], len(classes)), targets

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        """Logits [N, C]; with `labels` (trainable mode, FLYP's loss): normalised image features,
        the batch's distinct class embeddings, each image's row in them and logit_scale."""
        img = self.features(images)
        if labels is not None:
            if self.text_mode != "trainable":
                raise ValueError(f"contrastive outputs need text_mode='trainable', not {self.text_mode!r}")
            return (img, *self.batch_class_features(labels), self.clip.logit_scale)
        if self.text_mode == "trainable":
            return self.clip.logit_scale.exp() * img @ self.text_features().T
        return self.head(img)
