"""Weight averaging checked against torch.optim.swa_utils and hand arithmetic."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn

from clipdg_nb.swa import (
    EMA,
    RunningAverage,
    average_state_dicts,
    interpolate,
    swa_epochs,
    swalr_schedule,
    wise_ft,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    # BatchNorm brings float buffers and an int buffer (num_batches_tracked).
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _train_and_snapshot(model: nn.Module, n_epochs: int, avg_models=()) -> list[dict]:
    """Train a few SGD steps per 'epoch'; return a deep copy of the state dict after each
    epoch and update each AveragedModel at the same points."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    snaps = []
    for _ in range(n_epochs):
        for i in range(0, 64, 16):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16]).backward()
            opt.step()
        snaps.append(copy.deepcopy(model.state_dict()))
        for m in avg_models:
            m.update_parameters(model)
    return snaps


def _float_keys(sd):
    return [k for k, v in sd.items() if torch.is_floating_point(v)]


def test_running_average_matches_averaged_model_and_hand_mean():
    model = _net()
    ref = AveragedModel(model, use_buffers=True)  # we average float buffers too
    snaps = _train_and_snapshot(model, 5, [ref])
    # snapshots really differ, otherwise the test proves nothing
    assert not torch.equal(snaps[0]["0.weight"], snaps[-1]["0.weight"])

    avg = RunningAverage()
    for sd in snaps:
        avg.update(sd)
    assert avg.n_averaged == 5 == int(ref.n_averaged)
    out = avg.state_dict()
    ref_sd = ref.module.state_dict()
    for k in _float_keys(out):
        torch.testing.assert_close(out[k], ref_sd[k], msg=k)
        hand = sum(sd[k] for sd in snaps) / len(snaps)
        torch.testing.assert_close(out[k], hand, msg=k)
    # int buffer comes from the latest weights, not averaged
    assert out["1.num_batches_tracked"].item() == snaps[-1]["1.num_batches_tracked"].item() == 20
    # one-shot average agrees with the streaming one
    one_shot = average_state_dicts(snaps)
    for k in _float_keys(out):
        torch.testing.assert_close(one_shot[k], out[k], msg=k)


def test_running_average_does_not_alias_live_model():
    model = _net()
    avg = RunningAverage()
    avg.update(model.state_dict())
    before = avg.state_dict()["0.weight"].clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert torch.equal(avg.state_dict()["0.weight"], before)


def test_ema_matches_averaged_model_and_hand_recursion():
    decay = 0.7
    model = _net()
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    snaps = _train_and_snapshot(model, 5, [ref])
    ema = EMA(decay)
    for sd in snaps:
        ema.update(sd)
    out = ema.state_dict()
    ref_sd = ref.module.state_dict()
    for k in _float_keys(out):
        torch.testing.assert_close(out[k], ref_sd[k], msg=k)
        hand = snaps[0][k].double()
        for sd in snaps[1:]:
            hand = decay * hand + (1 - decay) * sd[k].double()
        torch.testing.assert_close(out[k], hand.float(), msg=k)


def test_ema_warmup_uses_min_decay_schedule():
    sds = [{"w": torch.full((3,), float(i) ** 2)} for i in range(6)]
    ema = EMA(0.9, warmup=True)
    hand = None
    for n, sd in enumerate(sds):
        if hand is None:
            hand = sd["w"].double()
        else:
            d = min(0.9, (1 + n) / (10 + n))
            hand = d * hand + (1 - d) * sd["w"].double()
        ema.update(sd)
    torch.testing.assert_close(ema.state_dict()["w"], hand.float())
    # warm-up really changed something compared with a plain EMA
    plain = EMA(0.9)
    for sd in sds:
        plain.update(sd)
    assert not torch.allclose(plain.state_dict()["w"], ema.state_dict()["w"])


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1, float("nan"), True, "0.9"])
def test_ema_rejects_bad_decay(decay):
    with pytest.raises((ValueError, TypeError), match="decay"):
        EMA(decay)


def _stream(n=7):
    g = torch.Generator().manual_seed(3)
    return [
        {"a": torch.randn(5, 4, generator=g), "b.bias": torch.randn(4, generator=g).half(),
         "pos_ids": torch.arange(4) + i}
        for i in range(n)
    ]


@pytest.mark.parametrize("make", [RunningAverage, lambda: EMA(0.8), lambda: EMA(0.95, warmup=True)])
def test_checkpoint_resume_through_safetensors(tmp_path, make):
    stream = _stream()
    full = make()
    for sd in stream:
        full.update(sd)

    part = make()
    for sd in stream[:3]:
        part.update(sd)
    tensors, meta = part.state()
    save_file(tensors, tmp_path / "acc.safetensors")
    (tmp_path / "acc.json").write_text(json.dumps(meta))
    del part

    resumed = type(full).from_state(
        load_file(tmp_path / "acc.safetensors"), json.loads((tmp_path / "acc.json").read_text())
    )
    for sd in stream[3:]:
        resumed.update(sd)
    assert resumed.n_averaged == full.n_averaged == len(stream)
    a, b = resumed.state_dict(), full.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    # fp16 input comes back as fp16, accumulated in fp32
    assert a["b.bias"].dtype == torch.float16
    assert full.state_dict(original_dtypes=False)["b.bias"].dtype == torch.float32
    assert torch.equal(a["pos_ids"], stream[-1]["pos_ids"])

    # the one-file convenience wrapper round-trips too
    full.save(tmp_path / "one.safetensors")
    again = type(full).load(tmp_path / "one.safetensors")
    for k, v in again.state_dict().items():
        assert torch.equal(v, b[k]), k


def test_ema_load_state_refuses_other_decay():
    ema = EMA(0.8)
    ema.update({"w": torch.ones(2)})
    tensors, meta = ema.state()
    with pytest.raises(ValueError, match="decay"):
        EMA(0.9).load_state(tensors, meta)
    with pytest.raises(ValueError, match="kind"):
        RunningAverage().load_state(tensors, meta)


def test_update_with_other_architecture_names_key():
    avg = RunningAverage()
    avg.update({"w": torch.zeros(2), "b": torch.zeros(1)})
    with pytest.raises(ValueError, match="'w'"):
        avg.update({"w": torch.zeros(3), "b": torch.zeros(1)})
    with pytest.raises(ValueError, match="'b'"):
        avg.update({"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="empty"):
        RunningAverage().state_dict()


def test_average_state_dicts_weighted_and_errors():
    sds = [{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(i)} for i in range(3)]
    sds[1]["w"] = torch.tensor([3.0, 6.0])
    sds[2]["w"] = torch.tensor([5.0, 10.0])
    out = average_state_dicts(sds, weights=[1, 1, 2])
    torch.testing.assert_close(out["w"], (1 * sds[0]["w"] + 1 * sds[1]["w"] + 2 * sds[2]["w"]) / 4)
    assert out["n"].item() == 2  # non-float from the last
    with pytest.raises(ValueError, match="'w'"):
        average_state_dicts([sds[0], {"w": torch.zeros(3), "n": torch.tensor(0)}])
    with pytest.raises(ValueError, match="weights"):
        average_state_dicts(sds, weights=[1, 1])
    with pytest.raises(ValueError, match="weights"):
        average_state_dicts(sds, weights=[1, -1, 1])
    with pytest.raises(ValueError, match="state_dicts"):
        average_state_dicts([])


def test_interpolate_endpoints_midpoint_and_wise_ft():
    g = torch.Generator().manual_seed(5)
    t0 = {"w": torch.randn(6, 3, generator=g), "ids": torch.arange(3)}
    t1 = {"w": torch.randn(6, 3, generator=g), "ids": torch.arange(3) + 10}
    assert torch.equal(interpolate(t0, t1, 0.0)["w"], t0["w"])
    assert torch.equal(interpolate(t0, t1, 1.0)["w"], t1["w"])
    assert torch.equal(interpolate(t0, t1, 0.0)["ids"], t0["ids"])
    assert torch.equal(interpolate(t0, t1, 1.0)["ids"], t1["ids"])
    torch.testing.assert_close(interpolate(t0, t1, 0.5)["w"], (t0["w"] + t1["w"]) / 2)
    torch.testing.assert_close(interpolate(t0, t1, 0.25)["w"], 0.75 * t0["w"] + 0.25 * t1["w"])

    ws = wise_ft(t0, t1, [0.0, 0.5, 1.0])
    assert list(ws) == [0.0, 0.5, 1.0]
    assert torch.equal(ws[1.0]["w"], t1["w"])
    torch.testing.assert_close(ws[0.5]["w"], (t0["w"] + t1["w"]) / 2)
    # inputs are not modified
    assert not torch.equal(t0["w"], t1["w"])


def test_interpolate_validation():
    t0, t1 = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    with pytest.raises(ValueError, match="allow_extrapolation"):
        interpolate(t0, t1, 1.5)
    torch.testing.assert_close(
        interpolate(t0, t1, 1.5, allow_extrapolation=True)["w"], torch.full((2,), 1.5)
    )
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            interpolate(t0, t1, bad, allow_extrapolation=True)
    with pytest.raises(TypeError, match="alpha"):
        interpolate(t0, t1, "0.5")
    with pytest.raises(ValueError, match="'v'"):
        interpolate(t0, {"v": torch.ones(2)}, 0.5)
    with pytest.raises(ValueError, match="duplicates"):
        wise_ft(t0, t1, [0.5, 0.5])


def test_swa_epochs():
    assert swa_epochs(20, swa_last_k=10) == list(range(10, 20))
    assert swa_epochs(20, swa_start_epoch=15) == [15, 16, 17, 18, 19]
    assert swa_epochs(3, swa_last_k=3) == [0, 1, 2]
    with pytest.raises(ValueError, match="exactly one"):
        swa_epochs(20)
    with pytest.raises(ValueError, match="exactly one"):
        swa_epochs(20, swa_last_k=2, swa_start_epoch=3)
    for kwargs, name in [({"swa_last_k": 0}, "swa_last_k"), ({"swa_last_k": 21}, "swa_last_k"),
                         ({"swa_start_epoch": 20}, "swa_start_epoch"),
                         ({"swa_start_epoch": -1}, "swa_start_epoch")]:
        with pytest.raises(ValueError, match=name):
            swa_epochs(20, **kwargs)
    with pytest.raises(ValueError, match="n_epochs"):
        swa_epochs(0, swa_last_k=1)
    with pytest.raises(TypeError, match="swa_last_k"):
        swa_epochs(20, swa_last_k=2.5)


def _lrs(sched_factory, steps=6):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = sched_factory(opt)
    out = []
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_swalr_schedule_matches_torch_and_validates():
    ours = _lrs(lambda o: swalr_schedule(o, swa_lr=1e-3, anneal_epochs=3))
    ref = _lrs(lambda o: SWALR(o, swa_lr=1e-3, anneal_epochs=3, anneal_strategy="cos"))
    assert ours == ref
    assert ours[-1] == pytest.approx(1e-3)

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="swa_lr"):
        swalr_schedule(opt, swa_lr=0.0)
    with pytest.raises(ValueError, match="anneal_epochs"):
        swalr_schedule(opt, swa_lr=1e-3, anneal_epochs=-1)
    with pytest.raises(ValueError, match="anneal_strategy"):
        swalr_schedule(opt, swa_lr=1e-3, anneal_strategy="step")
    with pytest.raises(ValueError, match="param groups"):
        swalr_schedule(opt, swa_lr=[1e-3, 1e-4])
