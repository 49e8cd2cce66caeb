"""Weight averaging checked against torch.optim.swa_utils and hand arithmetic."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn

from clipdg_nb.averaging import EMA, RunningAverage, interpolate, swa_epochs
from clipdg_nb.config import FinetuneConfig


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


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1, float("nan"), True, "0.9"])
def test_bad_ema_decay_rejected_by_the_config(decay):
    with pytest.raises(ValueError, match="ema_decay"):
        FinetuneConfig(ema_decay=decay).validate()


def _stream(n=7):
    g = torch.Generator().manual_seed(3)
    return [
        {"a": torch.randn(5, 4, generator=g), "b.bias": torch.randn(4, generator=g).half(),
         "pos_ids": torch.arange(4) + i}
        for i in range(n)
    ]


@pytest.mark.parametrize("make", [RunningAverage, lambda: EMA(0.8)])
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

    resumed = make()
    resumed.load_state(load_file(tmp_path / "acc.safetensors"), json.loads((tmp_path / "acc.json").read_text()))
    for sd in stream[3:]:
        resumed.update(sd)
    assert resumed.n_averaged == full.n_averaged == len(stream)
    a, b = resumed.state_dict(), full.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    # fp16 input comes back as fp16, accumulated in fp32
    assert a["b.bias"].dtype == torch.float16
    assert full.state()[0]["b.bias"].dtype == torch.float32
    assert torch.equal(a["pos_ids"], stream[-1]["pos_ids"])


def test_ema_load_state_refuses_other_decay():
    ema = EMA(0.8)
    ema.update({"w": torch.ones(2)})
    tensors, meta = ema.state()
    with pytest.raises(ValueError, match="decay"):
        EMA(0.9).load_state(tensors, meta)
    with pytest.raises(ValueError, match="holds a .ema. average"):
        RunningAverage().load_state(tensors, meta)  # an EMA average is not an SWA one


def test_interpolate_endpoints_and_midpoint():
    g = torch.Generator().manual_seed(5)
    t0 = {"w": torch.randn(6, 3, generator=g), "ids": torch.arange(3)}
    t1 = {"w": torch.randn(6, 3, generator=g), "ids": torch.arange(3) + 10}
    assert torch.equal(interpolate(t0, t1, 0.0)["w"], t0["w"])
    assert torch.equal(interpolate(t0, t1, 1.0)["w"], t1["w"])
    assert torch.equal(interpolate(t0, t1, 0.0)["ids"], t0["ids"])
    assert torch.equal(interpolate(t0, t1, 1.0)["ids"], t1["ids"])
    torch.testing.assert_close(interpolate(t0, t1, 0.5)["w"], (t0["w"] + t1["w"]) / 2)
    torch.testing.assert_close(interpolate(t0, t1, 0.25)["w"], 0.75 * t0["w"] + 0.25 * t1["w"])
    # inputs are not modified
    assert not torch.equal(t0["w"], t1["w"])


def test_wise_alphas_validated_by_the_config():
    for bad, match in [([1.5], "wise_alphas"), ([float("nan")], "wise_alphas"), (["0.5"], "wise_alphas"),
                       ([0.5, 0.5], "duplicates"), (0.5, "must be a list")]:
        with pytest.raises(ValueError, match=match):
            FinetuneConfig(wise_alphas=bad).validate()


def test_swa_epochs():
    assert swa_epochs(20, swa_last_k=10) == list(range(10, 20))
    assert swa_epochs(3, swa_last_k=3) == [0, 1, 2]
    with pytest.raises(ValueError, match="swa_last_k=21 exceeds epochs=20"):
        FinetuneConfig(epochs=20, swa_last_k=21).validate()


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


def test_training_schedule_uses_torch_swalr_on_swa_epochs():
    """train.EpochSchedule: StepLR on the ordinary epochs, then torch's SWALR annealing to swa_lr."""
    from clipdg_nb.train import EpochSchedule
    cfg = FinetuneConfig(lr=0.1, epochs=6, step_size=2, gamma=0.5, swa_last_k=3, swa_lr=1e-3).validate()
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    schedule, lrs = EpochSchedule(cfg, opt), []
    for epoch in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.end_epoch(epoch)
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    step, swalr, ref = torch.optim.lr_scheduler.StepLR(ref_opt, 2, 0.5), SWALR(ref_opt, swa_lr=1e-3, anneal_epochs=3), []
    for epoch in range(6):
        ref.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        (swalr if epoch >= 3 else step).step()
    assert lrs == pytest.approx(ref) and lrs[:3] == pytest.approx([0.1, 0.1, 0.05])


def test_a_new_variant_is_one_table_entry(easy_root, tmp_path, monkeypatch):
    """An entry added to averaging.AVERAGES is produced by fit (here: the mean of every epoch's
    end weights, enabled by `swa`), checkpointed and resumed, with no other change."""
    import numpy as np

    from clipdg_nb import averaging, train
    from clipdg_nb.images import Normalize
    from test_train import _tiny_setup

    monkeypatch.setitem(averaging.AVERAGES, "mean_all", averaging.Averaging(
        "swa", lambda cfg, device: RunningAverage(), "epoch", lambda cfg: 0))
    norm = Normalize((0.5,) * 3, (0.5,) * 3)
    model, images, groups, cfg = _tiny_setup(easy_root, epochs=3, swa_last_k=1, ema_decay=None)
    seen = []

    def evaluate(m):
        seen.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return 0.0, {}
    whole = train.fit(model, images, groups, cfg, normalize=norm, device=torch.device("cpu"), evaluate=evaluate,
                      progress=False)
    assert set(whole.variants) == {"swa", "mean_all"}
    for key, value in whole.variants["mean_all"].items():
        if torch.is_floating_point(value):
            assert torch.allclose(value, sum(s[key] for s in seen) / 3, atol=1e-6), key

    calls = {"n": 0}

    def dies_in_epoch_three(m):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return 0.0, {}
    model, images, groups, cfg = _tiny_setup(easy_root, epochs=3, swa_last_k=1, ema_decay=None)
    with pytest.raises(KeyboardInterrupt):
        train.fit(model, images, groups, cfg, normalize=norm, device=torch.device("cpu"),
                  evaluate=dies_in_epoch_three, checkpoint_dir=tmp_path, progress=False)
    model, images, groups, cfg = _tiny_setup(easy_root, epochs=3, swa_last_k=1, ema_decay=None)
    resumed = train.fit(model, images, groups, cfg, normalize=norm, device=torch.device("cpu"),
                        evaluate=lambda m: (0.0, {}), checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_epoch == 2
    for key, value in whole.variants["mean_all"].items():
        assert torch.equal(value, resumed.variants["mean_all"][key]), key
    assert np.isfinite(resumed.history[-1]["train_loss"])
