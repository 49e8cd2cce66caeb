"""The linear probe: multinomial logistic regression on frozen features, L-BFGS, its L2 strength
chosen on a validation split only."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..evaluate import top_classes


@dataclass
class LinearProbe:
    """Multinomial logistic regression on L2-normalised frozen features: logits = x / |x| @ W.T + b."""
    W: torch.Tensor  # [C, D]
    b: torch.Tensor  # [C]
    C: float  # chosen inverse regularisation (sklearn's meaning): L2 coefficient 1 / (C * n_train) on the mean loss
    val_scores: dict[float, float] = field(default_factory=dict)  # C -> validation score

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float().to(self.W.device), dim=-1) @ self.W.T + self.b


DEFAULT_CS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def _fit_lbfgs(x, y, W, b, lam, absent, max_iter):
    """Minimise mean CE + lam/2 (|W|^2 + |b_absent|^2) in place, full batch, strong-Wolfe L-BFGS.
    The bias of classes absent from training is penalised too, so it stays finite, not -inf."""
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
                     n_classes: int, Cs: Sequence[float] = DEFAULT_CS, seed: int = 0, *, max_iter: int = 300,
                     score_fn: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
                     device: str | torch.device = "cpu") -> LinearProbe:
    """Logistic regression on frozen features, its C chosen on (val_x, val_y) by `score_fn(y_true,
    y_pred)` (the dataset's selection metric; accuracy when None), ties to the smaller C. Every C is
    fitted in increasing order, warm-started from the last (convex: only saves time), from zeros,
    so the fit is deterministic; `seed` only seeds torch for any stochastic backend behaviour."""
    if not Cs:
        raise ValueError("Cs is empty; pass candidate inverse regularisation strengths, e.g. (0.1, 1, 10)")
    if len(val_y) == 0:
        raise ValueError("the validation split is empty; the regularisation must be chosen on validation data")
    torch.manual_seed(seed)
    score_fn = score_fn or (lambda y_true, y_pred: (y_true == y_pred).float().mean().item())
    x, xv = (F.normalize(torch.as_tensor(t).float(), dim=-1).to(device) for t in (train_x, val_x))
    y = torch.as_tensor(train_y).long().to(device)
    yv = torch.as_tensor(val_y).long().cpu()
    if int(y.max()) >= n_classes or int(yv.max()) >= n_classes:
        raise ValueError(f"labels reach {max(int(y.max()), int(yv.max()))} but n_classes={n_classes}")
    absent = torch.bincount(y, minlength=n_classes) == 0
    W = torch.zeros(n_classes, x.shape[1], device=device, requires_grad=True)
    b = torch.zeros(n_classes, device=device, requires_grad=True)
    best, scores = None, {}
    for C in sorted(float(c) for c in Cs):
        _fit_lbfgs(x, y, W, b, 1.0 / (C * len(y)), absent, max_iter)
        with torch.no_grad():
            pred = top_classes(xv @ W.T + b)[:, 0].cpu()
        scores[C] = float(score_fn(yv, pred))
        if best is None or scores[C] > scores[best.C]:  # `scores` shared: the probe gets every C's
            best = LinearProbe(W=W.detach().clone(), b=b.detach().clone(), C=C, val_scores=scores)
    return best
