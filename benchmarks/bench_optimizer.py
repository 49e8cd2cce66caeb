"""Adam as torch picks it on a CPU (a Python loop over the parameters) vs as `train.make_optimizer`
asks for it (foreach: one call per operation for all parameters), both in one run.

    python benchmarks/bench_optimizer.py          # tiny CLIP (both towers trainable), batch 64, CPU

Both train the same copy of the model on the same batches: the weights after the last step must be
bit-identical (checked and printed: the speed comes for free, every earlier run record stays
valid). Per step: forward + backward + optimizer step, then the optimizer step alone; the ways
alternate `--repeats` times and the fastest step time of each counts, so a shared machine's noise
hits both alike. The tiny model's 49,408-token embedding is most of its parameters, so the
optimizer is a large share of a CPU step (a quarter of the demo's training time before).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_args  # noqa: E402

from clipdg_nb import train  # noqa: E402
from clipdg_nb.config import FinetuneConfig  # noqa: E402
from clipdg_nb.models import load_clip  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="clipdg-tiny-vit", help="open_clip model name (random init)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the fastest step of each way counts")
    args = parse_args(p, argv, steps=3, repeats=1, batch_size=8)

    print(f"machine: {machine()}")
    torch.manual_seed(0)
    base = load_clip(args.model, None).model
    size = base.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch_size, 3, size, size, generator=gen),
                torch.randint(0, base.vocab_size, (args.batch_size, base.context_length), generator=gen))
               for _ in range(args.steps)]
    cfg = FinetuneConfig(dataset="fmow", lr=1e-4, weight_decay=1e-4).validate()
    ways = {"per-tensor loop (torch's CPU default)":
            lambda params: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False),
            "foreach (train.make_optimizer)": lambda params: train.make_optimizer(cfg, params)}

    def run(make) -> tuple[float, float, dict]:
        model = copy.deepcopy(base).train()
        opt = make(model.parameters())
        step_s, opt_s = [], []
        for x, tokens in batches:
            t0 = time.perf_counter()
            loss = (model.encode_image(x) @ model.encode_text(tokens).T).logsumexp(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            step_s.append(t2 - t0)
            opt_s.append(t2 - t1)
        # the first step allocates the optimizer's state: timed from the second on when there is one
        keep = slice(1, None) if len(step_s) > 1 else slice(None)
        return min(step_s[keep]), min(opt_s[keep]), model.state_dict()

    best: dict = {name: (float("inf"), float("inf")) for name in ways}
    weights: dict = {}
    for _ in range(args.repeats):
        for name, make in ways.items():
            step, opt, weights[name] = run(make)
            best[name] = (min(best[name][0], step), min(best[name][1], opt))
    loop, fast = weights.values()
    identical = all(torch.equal(loop[k], fast[k]) for k in loop)
    n_params = sum(p.numel() for p in base.parameters())
    print(f"{args.model} (random init, {n_params / 1e6:.1f} M parameters, both towers trained), {size} px, batch "
          f"{args.batch_size}, {args.steps} steps, Adam with L2 weight decay")
    for name, (step, opt) in best.items():
        print(f"  {name:40s} step {step * 1000:7.1f} ms, of which the optimizer {opt * 1000:6.1f} ms")
    print(f"  weights after {args.steps} steps bit-identical: {identical}")
    (loop_step, loop_opt), (fast_step, fast_opt) = best.values()
    print(f"RATIO optimizer step, per-tensor / foreach: {loop_opt / fast_opt:.2f}x; whole training step "
          f"{loop_step / fast_step:.2f}x; fastest of {args.repeats} x {args.steps} steps each")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
