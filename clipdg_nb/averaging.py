"""Weight averaging as small pure functions over state dicts: SWA, EMA and WiSE-FT.

`AVERAGES` is the table of averaged weight variants `train.fit` produces, checkpoints and resumes:
name -> which config field enables it, how it accumulates, per step or per epoch, from which epoch.
A new variant is one entry. The training loop asks the table *when* to average; the accumulators
decide *how*. Float entries (including
float buffers, as `AveragedModel(use_buffers=True)`) are averaged in at least float32; non-float
entries (`num_batches_tracked`, integer ids) follow the latest weights. Checked against
`torch.optim.swa_utils` in the tests. Arguments are validated once, in `config.py`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch

StateDict = Mapping[str, Any]


def _is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and torch.is_floating_point(value)


def _copy(t: torch.Tensor, dtype=None, device="cpu") -> torch.Tensor:
    # copy=True matters: .to() onto the same device and dtype returns the live tensor itself.
    return t.detach().to(device=device, dtype=dtype or t.dtype, copy=True).contiguous()


class _Accumulator:
    """A running copy of the weights on `device` plus an update count; the first update copies.
    Keep EMA (updated every step) on the model's device: a CPU copy per step would dominate a GPU step."""

    kind = "accumulator"

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._avg: dict[str, Any] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self.n_averaged = 0

    @torch.no_grad()
    def update(self, state_dict: StateDict) -> None:
        if self.n_averaged == 0:
            self._avg = {k: _copy(v, torch.promote_types(v.dtype, torch.float32), self.device) if _is_float(v)
                         else _copy(v, device=self.device) for k, v in state_dict.items()}
            self._dtypes = {k: v.dtype for k, v in state_dict.items() if _is_float(v)}
        else:
            for key, avg in self._avg.items():
                cur = state_dict[key]
                if _is_float(avg):
                    self._combine(avg, cur.detach().to(self.device, avg.dtype))
                else:
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
    """Exponential moving average, `avg = decay * avg + (1 - decay) * cur`, as
    `AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(decay))`."""

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


def wise_ft(zero_shot: StateDict, fine_tuned: StateDict, alphas: Iterable[float]) -> dict[float, dict[str, Any]]:
    """`{alpha: interpolate(zero_shot, fine_tuned, alpha)}` for each alpha."""
    return {float(a): interpolate(zero_shot, fine_tuned, a) for a in alphas}


def swa_epochs(n_epochs: int, swa_last_k: int) -> list[int]:
    """0-based epochs whose end-of-epoch weights go into the SWA average: the last K."""
    return list(range(n_epochs - swa_last_k, n_epochs))


@dataclass(frozen=True)
class Averaging:
    """One averaged weight variant of `train.fit`.

    enabled_by: the config field that turns it on (any truthy value: `swa=True`, `ema_decay=0.999`).
    make(cfg, device): a fresh accumulator (its `kind` names it in checkpoints).
    every: "step" (after each optimizer step) or "epoch" (at the end of each epoch).
    first_epoch(cfg): the first 0-based epoch whose weights go in; every later epoch's do too.
    """
    enabled_by: str
    make: Callable[[Any, torch.device], _Accumulator]
    every: str
    first_epoch: Callable[[Any], int]

    def enabled(self, cfg) -> bool:
        return bool(getattr(cfg, self.enabled_by))

    def takes(self, cfg, epoch: int) -> bool:
        return epoch >= self.first_epoch(cfg)


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
