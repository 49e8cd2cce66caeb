"""Weight averaging as small pure functions over state dicts: SWA, EMA, WiSE-FT and model soups.
`AVERAGES`: the averaged variants `train.fit` produces, checkpoints and resumes (a new one is one entry).
Float entries (buffers included, as `AveragedModel(use_buffers=True)`) are averaged in at least float32
and cast back; non-float ones are copied. Checked against `torch.optim.swa_utils` in the tests."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

StateDict = Mapping[str, Any]


def _is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and torch.is_floating_point(value)


def _copy(t: torch.Tensor, dtype=None, device="cpu") -> torch.Tensor:
    # copy=True matters: .to() onto the same device and dtype returns the live tensor itself.
    return t.detach().to(device=device, dtype=dtype or t.dtype, copy=True).contiguous()


def _describe(value: Any) -> str:
    return f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


class _Accumulator:
    """A running combination of state dicts on `device` and an update count; the first update copies."""

    kind = "accumulator"
    first_non_float = False  # non-float entries: the first state's (soups) or the latest's (SWA, EMA)

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._avg: dict[str, Any] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self.n_averaged = 0

    @torch.no_grad()
    def update(self, state_dict: StateDict, name: str = "these weights") -> None:
        if self.n_averaged == 0:
            self._avg = {k: _copy(v, torch.promote_types(v.dtype, torch.float32) if _is_float(v) else None, self.device)
                         for k, v in state_dict.items()}
            self._dtypes = {k: v.dtype for k, v in state_dict.items() if _is_float(v)}
        else:
            if set(state_dict) != set(self._avg):
                diff = sorted(set(state_dict) ^ set(self._avg))
                raise ValueError(f"{name} does not have the same weights as the first (keys differ: {diff[:5]}); "
                                 "only fine-tuned copies of one model are averaged")
            for key, avg in self._avg.items():
                cur = state_dict[key]
                if _is_float(avg) != _is_float(cur) or tuple(cur.shape) != tuple(avg.shape):
                    raise ValueError(f"{name}: weight {key!r} differs in kind or shape from the first's "
                                     f"({_describe(cur)} vs {_describe(avg)}); only copies of one model are averaged")
                if _is_float(avg):  # kept weights: float16, or float32 where float16 overflows
                    self._dtypes[key] = torch.promote_types(self._dtypes[key], cur.dtype)
                    self._combine(avg, cur.detach().to(self.device, avg.dtype))
                elif not self.first_non_float:
                    self._avg[key] = _copy(cur, device=self.device)
        self.n_averaged += 1

    def _combine(self, avg: torch.Tensor, cur: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights as CPU tensors, float entries cast back to the dtype they came in."""
        return {k: v.to("cpu", self._dtypes.get(k, v.dtype), copy=True) for k, v in self._avg.items()}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-able meta) for a safetensors checkpoint."""
        meta = {"kind": self.kind, "n_averaged": self.n_averaged,
                "dtypes": {k: str(d).removeprefix("torch.") for k, d in self._dtypes.items()}}
        return {k: v.to("cpu", copy=True).contiguous() for k, v in self._avg.items()}, meta

    def load_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        if meta.get("kind") != self.kind:
            raise ValueError(f"checkpoint holds a {meta.get('kind')!r} average, not {self.kind!r}")
        self._avg = {k: _copy(v, device=self.device) for k, v in tensors.items()}
        self._dtypes = {k: getattr(torch, d) for k, d in meta["dtypes"].items()}
        self.n_averaged = int(meta["n_averaged"])


class RunningAverage(_Accumulator):
    """SWA: equal weights, `avg += (cur - avg) / (n + 1)`, as `AveragedModel`'s default."""

    kind = "swa"

    def _combine(self, avg: torch.Tensor, cur: torch.Tensor) -> None:
        avg.add_((cur - avg) / (self.n_averaged + 1))


class EMA(_Accumulator):
    """`avg = decay * avg + (1 - decay) * cur`, as `AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(decay))`."""

    kind = "ema"

    def __init__(self, decay: float = 0.999, device: torch.device | str = "cpu") -> None:
        super().__init__(device)
        self.decay = float(decay)

    def _combine(self, avg: torch.Tensor, cur: torch.Tensor) -> None:
        avg.lerp_(cur, 1 - self.decay)

    def state(self):
        tensors, meta = super().state()
        return tensors, {**meta, "decay": self.decay}

    def load_state(self, tensors, meta) -> None:
        if meta.get("decay") != self.decay:  # resuming with another decay would change what it means
            raise ValueError(f"checkpoint has EMA decay={meta.get('decay')!r} but this run has {self.decay!r}")
        super().load_state(tensors, meta)


class SoupSum(_Accumulator):
    """A soup's running sum of ingredients; `state_dict()` is their mean, non-float entries the first's."""

    kind = "soup"
    first_non_float = True

    def _combine(self, avg: torch.Tensor, cur: torch.Tensor) -> None:
        avg.add_(cur)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: (v / self.n_averaged).to(self._dtypes[k]) if k in self._dtypes else _copy(v)
                for k, v in self._avg.items()}


def interpolate(theta_0: StateDict, theta_1: StateDict, alpha: float) -> dict[str, Any]:
    """`(1 - alpha) * theta_0 + alpha * theta_1` on float entries (WiSE-FT); alpha 0 and 1 give the
    endpoints exactly, and non-float entries come from the nearer endpoint."""
    near = theta_0 if alpha < 0.5 else theta_1
    out = {}
    for key, t0 in theta_0.items():
        t1 = theta_1[key]
        if _is_float(t0) and _is_float(t1):
            dtype = torch.promote_types(t0.dtype, t1.dtype)
            work = torch.promote_types(dtype, torch.float32)
            out[key] = ((1 - alpha) * t0.detach().to("cpu", work) + alpha * t1.detach().to("cpu", work)).to(dtype)
        else:
            out[key] = _copy(near[key])
    return out


def swa_epochs(n_epochs: int, swa_last_k: int) -> list[int]:
    """0-based epochs whose end-of-epoch weights go into the SWA average: the last K."""
    return list(range(n_epochs - swa_last_k, n_epochs))


@dataclass(frozen=True)
class Averaging:
    """One averaged weight variant of `train.fit`."""
    enabled_by: str  # the config field that turns it on (any truthy value: swa=True, ema_decay=0.999)
    make: Callable[[Any, torch.device], _Accumulator]  # (cfg, device) -> a fresh accumulator
    every: str  # "step" (after each optimizer step) or "epoch" (at the end of each epoch)
    first_epoch: Callable[[Any], int]  # (cfg) -> the first 0-based epoch whose weights go in, as do all later

    def enabled(self, cfg) -> bool:
        return bool(getattr(cfg, self.enabled_by))


AVERAGES: dict[str, Averaging] = {
    # SWA (the study): the end-of-epoch weights of the last swa_last_k epochs, on the CPU.
    "swa": Averaging("swa", lambda cfg, device: RunningAverage(), "epoch",
                     lambda cfg: swa_epochs(cfg.epochs, cfg.swa_last_k)[0]),
    # EMA: every step from the start, on the model's device (a CPU copy per step would dominate it).
    "ema": Averaging("ema_decay", lambda cfg, device: EMA(cfg.ema_decay, device=device), "step", lambda cfg: 0),
}
for _name, _avg in AVERAGES.items():
    if _avg.every not in ("step", "epoch"):
        raise ValueError(f"AVERAGES[{_name!r}]: every={_avg.every!r}; choose 'step' or 'epoch'")


# ---------------------------------------------------------------------------------------------
# Model soups (Wortsman et al. 2022): averages across fine-tuning runs, not along one. An
# ingredient's state is a state dict, or a zero-argument callable that loads one (so a greedy soup
# over many runs holds one running sum and one ingredient in memory, not every run at once).
# ---------------------------------------------------------------------------------------------

SOUP_VARIANTS = ("uniform_soup", "greedy_soup")


def _load(state: StateDict | Callable[[], StateDict]) -> StateDict:
    return state() if callable(state) else state


def uniform_soup(states: Iterable[StateDict | Callable[[], StateDict]]) -> dict[str, Any]:
    """The mean of every ingredient's float entries; non-float entries from the first ingredient."""
    total = SoupSum()
    for i, state in enumerate(states):
        total.update(_load(state), f"ingredient {i}")
    if total.n_averaged == 0:
        raise ValueError("uniform_soup needs at least one ingredient (a state dict); got none")
    return total.state_dict()


@dataclass
class Soup:
    """A soup's weights, its ingredients' names (in the order added), its score on the selection
    split, and for a greedy soup the trace of every ingredient tried."""
    state: dict[str, Any]
    ingredients: list[str]
    score: float
    trace: list[dict[str, Any]] = field(default_factory=list)


def _score(evaluate: Callable[[StateDict], float], state: StateDict, what: str) -> float:
    score = evaluate(state)
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
        raise ValueError(f"evaluate returned {score!r} for {what}; it must return a finite number (higher is better)")
    return float(score)


def _sorted_candidates(candidates) -> list[tuple[str, Any, float]]:
    candidates = [tuple(c) for c in candidates]
    if not candidates:
        raise ValueError("a soup needs at least one candidate (name, state, id_val_score); got none")
    names = [c[0] for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    for name, _, score in candidates:
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"candidate {name!r} has score {score!r}; give each its finite selection-split score")
    # best first; a stable sort keeps the given order among equal scores
    return sorted(candidates, key=lambda c: -float(c[2]))


def greedy_soup(candidates: Iterable[tuple[str, StateDict | Callable[[], StateDict], float]],
                evaluate: Callable[[StateDict], float]) -> Soup:
    """Greedy soup (Wortsman et al. 2022, Recipe 1): candidates `(name, state, score)` sorted by their
    own selection-split score, best first; each next one is kept if `evaluate(soup with it)` is not
    lower than the soup's score without it. The first is scored by `evaluate` too (one scorer).
    `evaluate(state)` is the only window onto data: the caller binds it to a validation split."""
    ordered = _sorted_candidates(candidates)
    name, state, _ = ordered[0]
    total = SoupSum()
    total.update(_load(state), name)
    best = _score(evaluate, total.state_dict(), f"the soup of {[name]}")
    kept, trace = [name], [{"name": name, "score": best, "kept": True}]
    for name, state, _ in ordered[1:]:
        trial = copy.deepcopy(total)
        trial.update(_load(state), name)
        score = _score(evaluate, trial.state_dict(), f"the soup of {kept + [name]}")
        keep = score >= best
        trace.append({"name": name, "score": score, "kept": keep})
        if keep:
            total, best = trial, score
            kept.append(name)
    return Soup(total.state_dict(), kept, best, trace)


def soup_variants(candidates: Iterable[tuple[str, StateDict | Callable[[], StateDict], float]],
                  score_on: Callable[[StateDict, str], float], select_split: str) -> dict[str, Soup]:
    """`{"uniform_soup": ..., "greedy_soup": ...}` from candidates `(name, state, score)` scored on
    `select_split`, which must be a validation split: `score_on(state, split)` is only called with it."""
    if not isinstance(select_split, str) or "test" in select_split:
        raise ValueError(f"select_split={select_split!r}: soups are chosen on a validation split (id_val or val), "
                         "never a test split")
    ordered = _sorted_candidates(candidates)

    def evaluate(state: StateDict) -> float:  # bound to the selection split: the only split read
        return score_on(state, select_split)

    uniform = uniform_soup(state for _, state, _ in ordered)
    return {"uniform_soup": Soup(uniform, [name for name, _, _ in ordered],
                                 _score(evaluate, uniform, "the uniform soup")),
            "greedy_soup": greedy_soup(ordered, evaluate)}
