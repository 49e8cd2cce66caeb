"""Weight averaging as pure functions over state dicts: SWA, EMA and WiSE-FT.

Everything here works on ``state_dict()`` mappings rather than on modules, so the
training loop decides *when* to average and this module only decides *how*. That keeps
the arithmetic testable against ``torch.optim.swa_utils`` and keeps averaged weights in
the project's checkpoint format (flat tensor dicts for safetensors, never pickled modules).

Conventions shared by every function:

* "float" entries (``torch.is_floating_point``) are averaged / interpolated. This
  includes floating buffers such as BatchNorm running statistics, i.e. the behaviour of
  ``AveragedModel(..., use_buffers=True)``. CLIP ViTs have no BatchNorm, so for them the
  distinction does not matter.
* Non-float entries (``num_batches_tracked``, integer ``position_ids``, non-tensor extra
  state) cannot be meaningfully averaged; they are copied from the most recent input.
* Arithmetic is done in at least float32 (``promote_types(dtype, float32)``) so fp16/bf16
  weights do not lose precision while accumulating.

Typical SWA use in a training loop (the ``torch.optim.swa_utils`` recipe)::

    epochs = set(swa_epochs(n_epochs, swa_last_k=10))
    avg = RunningAverage()
    swa_sched = swalr_schedule(opt, swa_lr=1e-4, anneal_epochs=1)
    for epoch in range(n_epochs):
        train_one_epoch(...)
        if epoch in epochs:
            avg.update(model.state_dict())
            swa_sched.step()
        else:
            sched.step()
    model.load_state_dict(avg.state_dict())
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "average_state_dicts",
    "RunningAverage",
    "EMA",
    "interpolate",
    "wise_ft",
    "swa_epochs",
    "swalr_schedule",
]

StateDict = Mapping[str, Any]

# Key under which the accumulator's JSON meta is stored in a safetensors header.
_META_KEY = "clipdg_nb.accumulator"
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def _is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and torch.is_floating_point(value)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # float16/bfloat16/float32 -> float32; float64 stays float64 (never lose precision).
    return torch.promote_types(dtype, torch.float32)


def _detached_copy(t: torch.Tensor, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    # copy=True matters: .to() on the same device/dtype would return a view that shares
    # storage with the live model, and the average would silently follow training.
    return t.detach().to(device=device, dtype=dtype or t.dtype, copy=True).contiguous()


def _check_same_structure(ref: StateDict, other: StateDict, what: str) -> None:
    """Raise ValueError naming the first key/shape that differs between two state dicts."""
    if not isinstance(other, Mapping):
        raise TypeError(f"{what} must be a mapping (a state_dict), got {type(other).__name__}")
    missing = [k for k in ref if k not in other]
    extra = [k for k in other if k not in ref]
    if missing or extra:
        raise ValueError(
            f"{what} has different keys: missing {missing[:5]!r}, unexpected {extra[:5]!r}; "
            "average only state dicts of the same architecture"
        )
    for key, value in ref.items():
        o = other[key]
        if isinstance(value, torch.Tensor) != isinstance(o, torch.Tensor):
            raise ValueError(f"{what}: key {key!r} is a tensor in one state dict but not the other")
        if isinstance(value, torch.Tensor) and value.shape != o.shape:
            raise ValueError(
                f"{what}: key {key!r} has shape {tuple(o.shape)}, expected {tuple(value.shape)}"
            )


def _check_real(name: str, value: Any) -> float:
    # bool is an int subclass; True as an alpha or decay is almost certainly a bug.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


# ---------------------------------------------------------------------------
# one-shot averaging
# ---------------------------------------------------------------------------


def average_state_dicts(
    state_dicts: Sequence[StateDict], weights: Sequence[float] | None = None
) -> dict[str, Any]:
    """(Weighted) arithmetic mean of float tensors over several state dicts.

    ``sum_i w_i * sd_i[k] / sum_i w_i`` for every float key; non-float entries come from
    the last state dict. Results are CPU tensors in the first state dict's dtype.
    ``weights`` default to equal weights (plain SWA over saved epoch checkpoints).
    """
    state_dicts = list(state_dicts)
    if not state_dicts:
        raise ValueError("state_dicts is empty; pass at least one state dict to average")
    ref = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        _check_same_structure(ref, sd, f"state_dicts[{i}]")

    if weights is None:
        w = [1.0] * len(state_dicts)
    else:
        w = [_check_real(f"weights[{i}]", x) for i, x in enumerate(weights)]
        if len(w) != len(state_dicts):
            raise ValueError(
                f"weights has {len(w)} entries but state_dicts has {len(state_dicts)}; "
                "give one weight per state dict"
            )
        if any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {w}")
    total = sum(w)

    last = state_dicts[-1]
    out: dict[str, Any] = {}
    for key, value in ref.items():
        if not _is_float(value):
            out[key] = _detached_copy(last[key]) if isinstance(last[key], torch.Tensor) else last[key]
            continue
        dtype = _acc_dtype(value.dtype)
        acc = sum(wi * sd[key].detach().to("cpu", dtype) for wi, sd in zip(w, state_dicts))
        out[key] = (acc / total).to(value.dtype)
    return out


# ---------------------------------------------------------------------------
# streaming accumulators (checkpointable)
# ---------------------------------------------------------------------------


class _Accumulator:
    """Shared machinery: a copy of the running weights (on `device`, CPU by default) plus an
    update counter. Keep an accumulator updated every step (EMA) on the model's device: a CPU
    copy of a large model's weights at every step would dominate a GPU step.

    Subclasses define ``_combine(avg, cur)`` (in place on ``avg``) and extra meta.
    Like ``AveragedModel``, the first update copies the weights (``n_averaged == 0``).
    """

    kind = "accumulator"

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._avg: dict[str, Any] = {}
        self._dtypes: dict[str, str] = {}  # original dtype per float key, to cast back
        self.n_averaged = 0

    # -- updating ---------------------------------------------------------
    @torch.no_grad()
    def update(self, state_dict: StateDict) -> None:
        """Fold one set of weights (e.g. ``model.state_dict()``) into the average."""
        if self.n_averaged == 0:
            if not isinstance(state_dict, Mapping):
                raise TypeError(
                    f"state_dict must be a mapping, got {type(state_dict).__name__}"
                )
            self._avg = {
                k: (_detached_copy(v, _acc_dtype(v.dtype), self.device) if _is_float(v)
                    else _detached_copy(v, device=self.device) if isinstance(v, torch.Tensor) else v)
                for k, v in state_dict.items()
            }
            self._dtypes = {
                k: str(v.dtype).removeprefix("torch.") for k, v in state_dict.items() if _is_float(v)
            }
        else:
            _check_same_structure(self._avg, state_dict, "state_dict")
            for key, avg in self._avg.items():
                cur = state_dict[key]
                if _is_float(avg):
                    self._combine(avg, cur.detach().to(self.device, avg.dtype))
                else:  # non-float entries follow the latest model
                    self._avg[key] = _detached_copy(cur, device=self.device) if isinstance(cur, torch.Tensor) else cur
        self.n_averaged += 1

    def _combine(self, avg: torch.Tensor, cur: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    # -- reading ----------------------------------------------------------
    def state_dict(self, original_dtypes: bool = True) -> dict[str, Any]:
        """The averaged weights as a new dict of CPU tensors (whatever the accumulator's device).

        ``original_dtypes=True`` casts float entries back to the dtype they arrived in
        (so e.g. an fp16 model gets fp16 weights); ``False`` returns the float32 accumulator.
        """
        if self.n_averaged == 0:
            raise ValueError(f"{type(self).__name__} is empty; call update() at least once")
        out = {}
        for k, v in self._avg.items():
            if _is_float(v) and original_dtypes:
                out[k] = v.to("cpu", getattr(torch, self._dtypes[k]), copy=True)
            else:
                out[k] = v.to("cpu", copy=True) if isinstance(v, torch.Tensor) else v
        return out

    # -- checkpointing ----------------------------------------------------
    def _extra_meta(self) -> dict[str, Any]:
        return {}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(tensors, meta)``: a flat tensor dict for safetensors and a JSON-able meta dict.

        Non-tensor state-dict entries cannot go in safetensors, so they are refused here.
        """
        tensors = {}
        for k, v in self._avg.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(
                    f"entry {k!r} is a {type(v).__name__}, not a tensor; it cannot be "
                    "checkpointed in safetensors"
                )
            tensors[k] = v.to("cpu", copy=True).contiguous()
        meta = {
            "kind": self.kind,
            "format": _FORMAT_VERSION,
            "n_averaged": self.n_averaged,
            "dtypes": dict(self._dtypes),
            **self._extra_meta(),
        }
        return tensors, meta

    def _check_meta(self, meta: Mapping[str, Any]) -> None:
        if meta.get("kind") != self.kind:
            raise ValueError(
                f"meta['kind'] is {meta.get('kind')!r} but this is a {self.kind!r} "
                "accumulator; load the checkpoint into the class that wrote it"
            )
        if meta.get("format") != _FORMAT_VERSION:
            raise ValueError(f"meta['format'] {meta.get('format')!r} is not {_FORMAT_VERSION}")

    def load_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Restore from :meth:`state` output (e.g. after ``safetensors.torch.load_file``)."""
        self._check_meta(meta)
        n = _check_int("meta['n_averaged']", meta["n_averaged"])
        if n < 0:
            raise ValueError(f"meta['n_averaged'] must be >= 0, got {n}")
        dtypes = dict(meta.get("dtypes", {}))
        unknown = [k for k in dtypes if k not in tensors]
        if unknown:
            raise ValueError(f"meta['dtypes'] names keys missing from tensors: {unknown[:5]!r}")
        self._avg = {k: _detached_copy(v, device=self.device) for k, v in tensors.items()}
        self._dtypes = dtypes
        self.n_averaged = n

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]):
        """Build an accumulator from :meth:`state` output (constructor args come from meta)."""
        obj = cls(**cls._init_kwargs(meta))
        obj.load_state(tensors, meta)
        return obj

    @staticmethod
    def _init_kwargs(meta: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def save(self, path) -> None:
        """Write the accumulator to one safetensors file (meta goes in its header)."""
        from safetensors.torch import save_file

        tensors, meta = self.state()
        save_file(tensors, str(path), metadata={_META_KEY: json.dumps(meta)})

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        if _META_KEY not in header:
            raise ValueError(f"{path} has no {_META_KEY!r} metadata; was it written by save()?")
        return cls.from_state(load_file(str(path)), json.loads(header[_META_KEY]))


class RunningAverage(_Accumulator):
    """Streaming SWA: every update gets equal weight.

    Same arithmetic as ``torch.optim.swa_utils.AveragedModel`` with its default averaging
    on CPU: ``avg <- avg + (cur - avg) / (n_averaged + 1)``, the first update copying.
    """

    kind = "swa"

    def _combine(self, avg: torch.Tensor, cur: torch.Tensor) -> None:
        avg.add_((cur - avg) / (self.n_averaged + 1))


class EMA(_Accumulator):
    """Exponential moving average: ``avg <- decay * avg + (1 - decay) * cur``.

    With ``warmup=False`` this is ``AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(decay))``
    (first update copies, then ``lerp`` by ``1 - decay``). With ``warmup=True`` the decay
    used at an update is ``min(decay, (1 + n) / (10 + n))`` with ``n = n_averaged`` before
    the update (the TF/timm warm-up), so early, poorly trained weights fade out faster.
    """

    kind = "ema"

    def __init__(self, decay: float = 0.999, warmup: bool = False, device: torch.device | str = "cpu") -> None:
        decay = _check_real("decay", decay)
        if not 0.0 < decay < 1.0:
            raise ValueError(
                f"decay must satisfy 0 < decay < 1, got {decay}; "
                "decay=1 would never move and decay=0 just copies the last weights"
            )
        if not isinstance(warmup, bool):
            raise TypeError(f"warmup must be a bool, got {warmup!r}")
        super().__init__(device)
        self.decay = decay
        self.warmup = warmup

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        n = self.n_averaged
        return min(self.decay, (1 + n) / (10 + n))

    def _combine(self, avg: torch.Tensor, cur: torch.Tensor) -> None:
        # lerp with weight (1 - decay), exactly as get_ema_multi_avg_fn does.
        avg.lerp_(cur, 1 - self.current_decay())

    def _extra_meta(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup}

    @staticmethod
    def _init_kwargs(meta: Mapping[str, Any]) -> dict[str, Any]:
        return {"decay": meta["decay"], "warmup": meta["warmup"]}

    def _check_meta(self, meta: Mapping[str, Any]) -> None:
        super()._check_meta(meta)
        # Resuming with another decay would silently change what the average means.
        if meta.get("decay") != self.decay or meta.get("warmup") != self.warmup:
            raise ValueError(
                f"checkpoint has decay={meta.get('decay')!r}, warmup={meta.get('warmup')!r} "
                f"but this EMA has decay={self.decay!r}, warmup={self.warmup!r}; "
                "use EMA.from_state(...) to take them from the checkpoint"
            )


# ---------------------------------------------------------------------------
# WiSE-FT
# ---------------------------------------------------------------------------


def interpolate(
    theta_0: StateDict, theta_1: StateDict, alpha: float, *, allow_extrapolation: bool = False
) -> dict[str, Any]:
    """``(1 - alpha) * theta_0 + alpha * theta_1`` on float tensors (WiSE-FT).

    ``alpha=0`` gives ``theta_0`` (zero-shot), ``alpha=1`` gives ``theta_1`` (fine-tuned),
    both exactly. Non-float entries come from the nearer endpoint (``theta_0`` when
    ``alpha < 0.5``) so the endpoints are reproduced exactly. Float results use the
    promoted dtype of the two inputs, on CPU.
    """
    alpha = _check_real("alpha", alpha)
    if not allow_extrapolation and not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"alpha must be in [0, 1], got {alpha}; pass allow_extrapolation=True to extrapolate"
        )
    if not isinstance(theta_0, Mapping):
        raise TypeError(f"theta_0 must be a mapping (a state_dict), got {type(theta_0).__name__}")
    _check_same_structure(theta_0, theta_1, "theta_1")
    near = theta_0 if alpha < 0.5 else theta_1
    out: dict[str, Any] = {}
    for key, t0 in theta_0.items():
        t1 = theta_1[key]
        if _is_float(t0) and _is_float(t1):
            dtype = torch.promote_types(t0.dtype, t1.dtype)
            work = _acc_dtype(dtype)
            a = t0.detach().to("cpu", work)
            b = t1.detach().to("cpu", work)
            out[key] = ((1 - alpha) * a + alpha * b).to(dtype)
        else:
            v = near[key]
            out[key] = _detached_copy(v) if isinstance(v, torch.Tensor) else v
    return out


def wise_ft(
    zero_shot: StateDict, fine_tuned: StateDict, alphas: Iterable[float], **kwargs: Any
) -> dict[float, dict[str, Any]]:
    """``{alpha: interpolate(zero_shot, fine_tuned, alpha)}`` for each alpha.

    Each entry is a full copy of the weights; for large models evaluate one alpha at a
    time with :func:`interpolate` instead of holding them all.
    """
    alphas = [_check_real("alphas[]", a) for a in alphas]
    if not alphas:
        raise ValueError("alphas is empty; pass e.g. [0.0, 0.5, 1.0]")
    if len(set(alphas)) != len(alphas):
        raise ValueError(f"alphas has duplicates: {alphas}")
    return {a: interpolate(zero_shot, fine_tuned, a, **kwargs) for a in alphas}


# ---------------------------------------------------------------------------
# when to average, and the learning rate while doing it
# ---------------------------------------------------------------------------


def swa_epochs(
    n_epochs: int, swa_last_k: int | None = None, swa_start_epoch: int | None = None
) -> list[int]:
    """0-based epochs whose end-of-epoch weights go into the SWA average.

    Give exactly one of ``swa_last_k`` (average the last K epochs, the reference study
    used 10 of 20) or ``swa_start_epoch`` (average from that epoch to the end).
    """
    n_epochs = _check_int("n_epochs", n_epochs)
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be >= 1, got {n_epochs}")
    if (swa_last_k is None) == (swa_start_epoch is None):
        raise ValueError("give exactly one of swa_last_k or swa_start_epoch")
    if swa_last_k is not None:
        k = _check_int("swa_last_k", swa_last_k)
        if not 1 <= k <= n_epochs:
            raise ValueError(f"swa_last_k must be in [1, n_epochs={n_epochs}], got {k}")
        start = n_epochs - k
    else:
        start = _check_int("swa_start_epoch", swa_start_epoch)
        if not 0 <= start < n_epochs:
            raise ValueError(
                f"swa_start_epoch must be in [0, n_epochs-1={n_epochs - 1}] (0-based), got {start}"
            )
    return list(range(start, n_epochs))


def swalr_schedule(
    optimizer: torch.optim.Optimizer,
    swa_lr: float | Sequence[float],
    anneal_epochs: int = 10,
    anneal_strategy: str = "cos",
) -> torch.optim.swa_utils.SWALR:
    """``torch.optim.swa_utils.SWALR`` with argument checks that name the parameter.

    Build it at the start of training, but call its ``step()`` only on SWA epochs (and
    the ordinary scheduler's ``step()`` on the others): it anneals each group's lr from
    its current value to ``swa_lr`` over ``anneal_epochs`` steps, then holds ``swa_lr``.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    lrs = list(swa_lr) if isinstance(swa_lr, (list, tuple)) else [swa_lr]
    for lr in lrs:
        lr = _check_real("swa_lr", lr)
        if lr <= 0:
            raise ValueError(f"swa_lr must be > 0, got {lr}")
    if isinstance(swa_lr, (list, tuple)) and len(lrs) != len(optimizer.param_groups):
        raise ValueError(
            f"swa_lr has {len(lrs)} values but the optimizer has "
            f"{len(optimizer.param_groups)} param groups; give one or a single float"
        )
    anneal_epochs = _check_int("anneal_epochs", anneal_epochs)
    if anneal_epochs < 0:
        raise ValueError(f"anneal_epochs must be >= 0, got {anneal_epochs}")
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
    return torch.optim.swa_utils.SWALR(
        optimizer,
        swa_lr=list(swa_lr) if isinstance(swa_lr, (list, tuple)) else float(swa_lr),
        anneal_epochs=anneal_epochs,
        anneal_strategy=anneal_strategy,
    )
