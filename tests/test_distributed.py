"""DDP across processes is the one-process run: same global batches, same weights, same metrics.

Two CPU processes with gloo; a tiny model, a few steps, fp32, no augmentation.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from clipdg_nb import methods, train
from clipdg_nb.runs import Run
from clipdg_nb.config import FinetuneConfig
from clipdg_nb.data import EpochShuffleSampler, GroupUniformSampler, load_dataset, split_indices
from clipdg_nb.config import from_params
from clipdg_nb.devices import ShardedBatchSampler
from clipdg_nb.evaluate import predict_logits
from clipdg_nb.images import Normalize, image_split
from clipdg_nb.models import vision_only

N_TRAIN = 97  # batches of 32, 32, 32, 1: the last is shorter than the world (a stand-in item on rank 1)
NORM = Normalize((0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("sampler", [EpochShuffleSampler(N_TRAIN, seed=3),
                                     GroupUniformSampler(np.arange(N_TRAIN) % 5, seed=3)])
def test_shards_reassemble_the_one_process_batches(sampler, world):
    sampler.set_epoch(1)
    order = list(sampler)
    shards = [ShardedBatchSampler(sampler, 32, r, world) for r in range(world)]
    per_rank = [list(s) for s in shards]
    assert {len(p) for p in per_rank} == {len(shards[0])} == {4}  # every rank runs the same steps
    for k in range(4):
        parts = [p[k] for p, s in zip(per_rank, shards) if s.weight(k) > 0]
        assert sum(parts, []) == order[32 * k:32 * (k + 1)]
        assert sum(s.weight(k) for s in shards) == pytest.approx(world)  # the weighted mean is the global mean
        assert all(len(p[k]) == 1 for p, s in zip(per_rank, shards) if s.weight(k) == 0)
    assert max(len(p[0]) for p in per_rank) == -(-32 // world)  # about batch_size // world per rank
    sampler.set_epoch(2)
    assert list(shards[0])[0] != per_rank[0][0]
    with pytest.raises(ValueError, match="batch_size"):
        ShardedBatchSampler(sampler, 1, 0, 2)


def _setup(root):
    ds = load_dataset("fmow", root)
    idx = split_indices(ds, "train")[:N_TRAIN]
    val = image_split(ds, split_indices(ds, "id_val")[:64], 32, cache_dir=None)
    cfg = FinetuneConfig(root_dir=str(root), method="vision_only", vision_arch="tiny", vision_weights=None,
                         lr=1e-3, epochs=2, swa_last_k=2, ema_decay=0.9, batch_size=32, sampler="shuffle",
                         precision="fp32", scheduler="cosine", optimizer="adamw").validate()
    torch.manual_seed(0)
    model = vision_only(62, arch="tiny", image_size=32)
    labels = torch.as_tensor(np.asarray(ds.y_array)[split_indices(ds, "id_val")[:64]])

    def evaluate(m):
        acc = (predict_logits(m, val, NORM, torch.device("cpu"), 64).argmax(1) == labels).float().mean().item()
        return acc, {"acc": acc}
    groups = np.asarray(ds.metadata_array[idx, 0])
    return model, image_split(ds, idx, 32, cache_dir=None), groups, cfg, evaluate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, root, out):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, images, groups, cfg, evaluate = _setup(root)
        # Each rank names its own folder; all follow rank 0's, and only rank 0 writes there.
        result = train.fit(model, images, groups, cfg, normalize=NORM, device=torch.device("cpu"), evaluate=evaluate,
                           checkpoint_dir=Path(out) / f"ckpt{rank}", progress=False)
        torch.save({"last": result.last_state, "swa": result.variants["swa"], "ema": result.variants["ema"],
                    "best_epoch": result.best_epoch, "history": result.history}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _comparable(key: str, value: torch.Tensor) -> torch.Tensor:
    # The attention *key* bias has an exactly-zero gradient (softmax ignores a shift shared by all
    # keys), so Adam turns float round-off there into steps of either sign: drop that third.
    if key.endswith("in_proj_bias"):
        third = len(value) // 3
        return torch.cat([value[:third], value[2 * third:]])
    return value


def test_two_process_ddp_equals_one_process(easy_root, tmp_path):
    workers = mp.spawn(_ddp_worker, args=(2, _free_port(), str(easy_root), str(tmp_path)), nprocs=2, join=False)
    model, images, groups, cfg, evaluate = _setup(easy_root)  # the one-process run, while they start up
    one = train.fit(model, images, groups, cfg, normalize=NORM, device=torch.device("cpu"), evaluate=evaluate,
                    progress=False)
    deadline = time.monotonic() + 240
    while not workers.join(timeout=max(1.0, deadline - time.monotonic())):  # True once every rank is done
        if time.monotonic() > deadline:
            for proc in workers.processes:
                proc.kill()
            pytest.fail("the DDP ranks did not finish in 240 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for name, ref in (("last", one.last_state), ("swa", one.variants["swa"]), ("ema", one.variants["ema"])):
        for r in ranks:
            for k, v in ref.items():
                a, b = _comparable(k, r[name][k]), _comparable(k, v)
                assert torch.allclose(a, b, atol=2e-6, rtol=1e-4), (name, k, (a - b).abs().max())
    model.load_state_dict(ranks[0]["last"])  # and the function: the same logits
    ddp_logits = predict_logits(model, images, NORM, torch.device("cpu"))
    model.load_state_dict(one.last_state)
    assert torch.allclose(ddp_logits, predict_logits(model, images, NORM, torch.device("cpu")), atol=1e-4)
    assert [h["train_loss"] for h in ranks[0]["history"]] == pytest.approx([h["train_loss"] for h in one.history],
                                                                           rel=1e-5)
    assert ranks[0]["history"] == ranks[1]["history"]  # every rank evaluated and chose alike
    assert ranks[0]["best_epoch"] == ranks[1]["best_epoch"] == one.best_epoch
    assert (tmp_path / "ckpt0" / train.CHECKPOINT).exists() and not (tmp_path / "ckpt1").exists()


def test_torchrun_entry_matches_a_notebook_run(easy_root, run_kwargs, tmp_path):
    params = dict(run_kwargs, root_dir=str(easy_root), method="vision_only", lr=1e-3, epochs=2, swa=False,
                  sampler="shuffle", precision="fp32", fraction=0.2, eval_splits=["id_val", "test"],
                  batch_size=32, device="cpu")
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(params))
    cfg = from_params(FinetuneConfig, params)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "clipdg_nb.cli", "train", "--config", str(config), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, so a hang is killed whole
    # The one-process reference (a notebook's call) runs while torchrun starts up.
    one = methods.run(FinetuneConfig(**dict(params, output_dir=str(tmp_path / "one"))), progress=False)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in 240 s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    assert "acc_avg=" in output
    ddp_record = json.loads((Run.of(cfg).path / "result.json").read_text())
    assert not Run.of(cfg).partial.exists()  # the checkpoint went with the finished run's build folder
    assert len(list(Path(cfg.output_dir).rglob("result.json"))) == 1  # rank 0 alone wrote
    assert ddp_record["params"] == dict(one["params"], output_dir=cfg.output_dir)
    for split, metrics in one["metrics"].items():
        assert ddp_record["metrics"][split] == pytest.approx(metrics, abs=1e-9), split
    assert [h["train_loss"] for h in ddp_record["history"]] == pytest.approx([h["train_loss"] for h in one["history"]],
                                                                             rel=1e-5)


def test_compile_option_wraps_only_the_training_steps(easy_root, monkeypatch):
    # The other speed knob of fit: compile=True runs the steps through torch.compile's module while
    # states, averages and evaluation use the model itself (plain keys). Compiling for real takes
    # minutes on CPU, so torch.compile is stood in for here.
    with pytest.raises(ValueError, match="compile"):
        FinetuneConfig(compile="yes").validate()
    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return module
    monkeypatch.setattr(torch, "compile", fake_compile)
    model, images, groups, cfg, evaluate = _setup(easy_root)
    cfg.compile, cfg.epochs, cfg.swa = True, 1, False
    result = train.fit(model, images, groups, cfg, normalize=NORM, device=torch.device("cpu"), evaluate=evaluate,
                       progress=False)
    assert compiled == [model]
    assert set(result.last_state) == set(model.state_dict())
