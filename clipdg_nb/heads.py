"""Classifier heads on top of CLIP / vision towers: prompt embeddings, the fine-tuning classifier,
the vision-only wrapper and the logistic-regression linear probe.

Pure torch; no model loading here (that is `models.py`), so the functions are easy to test.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

Template = Union[str, Callable[[str], str]]
TEXT_MODES = ("trainable", "frozen", "head")


def render_prompt(template: Template, classname: str) -> str:
    """One prompt: callables are called; strings are rendered by `clipdg_nb.data.render_prompt`."""
    if callable(template):
        return template(classname)
    from .data import render_prompt as render_string  # data imports wilds: only when a string comes
    return render_string(template, classname)


def tokenize_prompts(tokenizer, classnames: Sequence[str], templates: Sequence[Template]) -> torch.Tensor:
    """Token ids [C*T, L], class-major (all templates of class 0, then class 1, ...) like open_clip."""
    if not classnames:
        raise ValueError("classnames is empty; pass one readable name per class")
    if not templates:
        raise ValueError("templates is empty; pass at least one prompt template such as 'a photo of {c}.'")
    return tokenizer([render_prompt(t, c) for c in classnames for t in templates])


def class_text_embeddings(model, tokens: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class embeddings [C, D]: each prompt L2-normalised, averaged over templates, renormalised.

    Differentiable (no `no_grad` here), so the trainable classifier can back-propagate into the
    text tower; `tokens` must be class-major as produced by `tokenize_prompts`.
    """
    emb = model.encode_text(tokens, normalize=True)
    emb = emb.reshape(n_classes, tokens.shape[0] // n_classes, -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


def _unpack_model(model, tokenizer):
    """Accept a `ClipBundle` (duck-typed: has .model and .tokenizer) or a bare open_clip model."""
    if hasattr(model, "model") and hasattr(model, "tokenizer"):
        return model.model, tokenizer if tokenizer is not None else model.tokenizer
    return model, tokenizer


class ClipClassifier(nn.Module):
    """CLIP as an image classifier for fine-tuning; `forward(images) -> logits [N, C]`.

    text_mode:
      "trainable": both towers train; logits = exp(logit_scale) * img @ text.T with the class
                   prompt embeddings recomputed every forward (the reference study's CE fine-tuning).
      "frozen":    text tower dropped; a linear head initialised to exp(logit_scale) * zero-shot
                   weights on normalised image features (WiSE-FT style).
      "head":      image tower + an arbitrary linear head on normalised features (linear probe, LP-FT).
    The classifier takes ownership of the model's modules (no copy): deep-copy the model first if you
    need the original. Within one mode the state-dict keys never change, so a zero-shot and a
    fine-tuned classifier can be interpolated key by key (see `classifier_state`).
    """

    def __init__(self, model, *, text_mode: str = "trainable", tokenizer=None,
                 classnames: Sequence[str] | None = None, templates: Sequence[Template] | None = None,
                 head_weight: torch.Tensor | None = None, head_bias: torch.Tensor | None = None):
        super().__init__()
        if text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode={text_mode!r} is unknown; choose one of {list(TEXT_MODES)}")
        model, tokenizer = _unpack_model(model, tokenizer)
        self.text_mode = text_mode
        self._text_cache: torch.Tensor | None = None
        if text_mode in ("trainable", "frozen") and (tokenizer is None or classnames is None or templates is None):
            raise ValueError(f"text_mode={text_mode!r} needs tokenizer, classnames and templates "
                             "to build the class prompts")
        if text_mode == "trainable":
            self.clip = model
            # Not persistent: the state dict stays all-float (interpolable) and identical across runs.
            tokens = tokenize_prompts(tokenizer, classnames, templates).to(model.logit_scale.device)
            self.register_buffer("prompt_tokens", tokens, persistent=False)
            self.n_classes = len(classnames)
            return
        self.visual = model.visual
        if text_mode == "frozen":
            tokens = tokenize_prompts(tokenizer, classnames, templates).to(model.logit_scale.device)
            with torch.no_grad():
                text = class_text_embeddings(model, tokens, len(classnames))
                head_weight = model.logit_scale.exp() * text
        elif head_weight is None:
            raise ValueError("text_mode='head' needs head_weight [C, D] (e.g. LinearProbe.W)")
        head_weight = torch.as_tensor(head_weight).detach().float()
        n_classes, dim = head_weight.shape
        if dim != model.visual.output_dim:
            raise ValueError(f"head_weight has {dim} features but the image tower gives {model.visual.output_dim}")
        self.head = nn.Linear(dim, n_classes)
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
            self.head.bias.copy_(torch.zeros(n_classes) if head_bias is None else torch.as_tensor(head_bias))
        self.head.to(model.logit_scale.device)
        self.n_classes = n_classes

    @classmethod
    def zero_shot(cls, model, tokenizer, classnames, templates, text_mode: str = "trainable") -> "ClipClassifier":
        """The zero-shot classifier (the fine-tuning start point) in `trainable` or `frozen` mode."""
        if text_mode == "head":
            raise ValueError("text_mode='head' has no zero-shot form; use from_linear_probe")
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
        """Class embeddings [C, D] of the trainable mode (cached inside `cached_text_features()`)."""
        if self.text_mode != "trainable":
            raise AttributeError(f"text_mode={self.text_mode!r} has no text tower")
        if self._text_cache is not None:
            return self._text_cache
        return class_text_embeddings(self.clip, self.prompt_tokens, self.n_classes)

    @contextlib.contextmanager
    def cached_text_features(self):
        """For evaluation: embed the prompts once for the whole block instead of every batch."""
        if self.text_mode != "trainable":
            yield self
            return
        with torch.no_grad():
            self._text_cache = class_text_embeddings(self.clip, self.prompt_tokens, self.n_classes)
        try:
            yield self
        finally:
            self._text_cache = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        img = self.features(images)
        if self.text_mode == "trainable":
            return self.clip.logit_scale.exp() * img @ self.text_features().T
        return self.head(img)


def classifier_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the state dict: the unit WiSE-FT / SWA interpolate key by key."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def load_classifier_state(module: nn.Module, state: dict[str, torch.Tensor], strict: bool = True):
    """Load a (possibly interpolated) state dict back; dtypes follow the module's own tensors."""
    return module.load_state_dict(state, strict=strict)


class VisionClassifier(nn.Module):
    """Backbone + linear head, with the same `features` / `forward` as `ClipClassifier`.

    `mean`, `std` and `image_size` describe the input normalisation the backbone expects.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, *, mean, std, image_size: int,
                 normalize_features: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = image_size
        self.normalize_features = normalize_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.backbone(images)
        return F.normalize(x, dim=-1) if self.normalize_features else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@dataclass
class LinearProbe:
    """Multinomial logistic regression on frozen features: logits = x @ W.T + b."""
    W: torch.Tensor  # [C, D]
    b: torch.Tensor  # [C]
    C: float  # chosen inverse regularisation (sklearn's meaning)
    weight_decay: float  # the same as an L2 coefficient on the mean loss: 1 / (C * n_train)
    val_scores: dict[float, float] = field(default_factory=dict)  # C -> validation score
    normalize: bool = True  # whether features are L2-normalised before the head

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().to(self.W.device)
        return (F.normalize(x, dim=-1) if self.normalize else x) @ self.W.T + self.b

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(dim=1)

    def as_linear(self) -> nn.Linear:
        lin = nn.Linear(self.W.shape[1], self.W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(self.W)
            lin.bias.copy_(self.b)
        return lin


DEFAULT_CS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def _accuracy(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    return (y_true == y_pred).float().mean().item()


def _fit_lbfgs(x, y, W, b, lam, absent, max_iter):
    """Minimise mean CE + lam/2 (|W|^2 + |b_absent|^2) in place, full batch, strong-Wolfe L-BFGS.

    The bias of classes never seen in training is penalised too, so it stays finite instead of
    drifting to -inf (the head must still be n_classes wide).
    """
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ W.T + b, y)
        loss = loss + 0.5 * lam * (W.pow(2).sum() + b[absent].pow(2).sum())
        loss.backward()
        return loss

    opt.step(closure)


def fit_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                     n_classes: int, Cs: Sequence[float] = DEFAULT_CS, seed: int = 0, *, normalize: bool = True,
                     max_iter: int = 300, score_fn: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
                     device: str | torch.device = "cpu") -> LinearProbe:
    """Logistic regression on frozen features, regularisation chosen on the given validation split.

    Fits every C in increasing order (each warm-started from the last; the problem is convex, so
    this only saves time), scores each on (val_x, val_y) with `score_fn(y_true, y_pred)`
    (accuracy by default; pass macro-F1 for iWildCam) and returns the best; ties go to the
    smaller C. Never pass test data as the validation split. Initialisation is zero, so the fit
    is deterministic; `seed` only seeds torch for any stochastic backend behaviour.
    """
    if not Cs:
        raise ValueError("Cs is empty; pass candidate inverse regularisation strengths, e.g. (0.1, 1, 10)")
    if len(val_y) == 0:
        raise ValueError("the validation split is empty; the regularisation must be chosen on validation data")
    torch.manual_seed(seed)
    score_fn = score_fn or _accuracy
    prep = (lambda t: F.normalize(t.float(), dim=-1)) if normalize else (lambda t: t.float())
    x, xv = prep(torch.as_tensor(train_x)).to(device), prep(torch.as_tensor(val_x)).to(device)
    y = torch.as_tensor(train_y).long().to(device)
    yv = torch.as_tensor(val_y).long().cpu()
    if int(y.max()) >= n_classes or int(yv.max()) >= n_classes:
        raise ValueError(f"labels reach {max(int(y.max()), int(yv.max()))} but n_classes={n_classes}")
    absent = torch.bincount(y, minlength=n_classes) == 0
    W = torch.zeros(n_classes, x.shape[1], device=device, requires_grad=True)
    b = torch.zeros(n_classes, device=device, requires_grad=True)
    best, scores = None, {}
    for C in sorted(float(c) for c in Cs):
        lam = 1.0 / (C * len(y))
        _fit_lbfgs(x, y, W, b, lam, absent, max_iter)
        with torch.no_grad():
            pred = (xv @ W.T + b).argmax(dim=1).cpu()
        scores[C] = float(score_fn(yv, pred))
        if best is None or scores[C] > scores[best[0]]:
            best = (C, lam, W.detach().clone(), b.detach().clone())
    C, lam, Wb, bb = best
    return LinearProbe(W=Wb, b=bb, C=C, weight_decay=lam, val_scores=scores, normalize=normalize)
