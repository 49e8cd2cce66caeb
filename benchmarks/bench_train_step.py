"""Our training step vs a plain open_clip loop: same model, same data, both in one run.

    python benchmarks/bench_train_step.py        # tiny CLIP, 512 random 32 px images, batch 128, CPU

(a) ours: `train.fit` itself (ClipClassifier with both towers trainable, uint8 batches normalised on
    the device, the autocast of `--precision`, Adam + StepLR, the losses read and checked once an epoch);
(b) plain: the loop everyone writes first, over the same DataLoader of the same images:
    `model.encode_image` / `model.encode_text` + cross-entropy on `logit_scale * img @ text.T`,
    plain Adam, under the same autocast.
Both start from the same weights. Epoch times come from the end of each epoch (the first dropped as
warm-up); the ways alternate `--repeats` times and the fastest epoch of each counts, so a shared
machine's noise hits both alike. Prints images/s (wall and per CPU-second) and the ratio.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import batch_loader, machine, parse_args  # noqa: E402

from clipdg_nb import train  # noqa: E402
from clipdg_nb.devices import resolve_device, resolve_precision  # noqa: E402
from clipdg_nb.config import FinetuneConfig  # noqa: E402
from clipdg_nb.data import class_names, prompt_templates, render_prompt  # noqa: E402
from clipdg_nb.devices import autocast as autocast_for  # noqa: E402
from clipdg_nb.images import ArrayImages, Normalize  # noqa: E402
from clipdg_nb.models import ClipClassifier, load_clip  # noqa: E402


def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def epoch_spans(ends: list[tuple[float, float]], start: tuple[float, float]) -> np.ndarray:
    """[epochs, 2] (wall, CPU) seconds of each epoch after the first (or of the only one)."""
    spans = np.diff(np.array([start] + ends), axis=0)
    return spans[1:] if len(spans) > 1 else spans


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="clipdg-tiny-vit", help="open_clip model name (random init)")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the fastest epoch of each way counts")
    p.add_argument("--compile", action="store_true", help="FinetuneConfig(compile=True) for ours")
    args = parse_args(p, argv, images=64, batch_size=32, epochs=2, repeats=1)

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(f"machine: {machine()}")
    torch.manual_seed(0)
    bundle = load_clip(args.model, None)
    size = bundle.image_size if isinstance(bundle.image_size, int) else bundle.image_size[0]
    rng = np.random.default_rng(0)
    images = ArrayImages(rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8),
                         rng.integers(0, 62, args.images), np.arange(args.images))
    names = class_names("fmow")
    templates = [lambda c, t=t: render_prompt(t, c) for t in prompt_templates("fmow", "paper")]
    n_images = args.images
    norm = Normalize(bundle.mean, bundle.std)

    tokens = bundle.tokenizer([t(c) for c in names for t in templates]).to(device)
    mean = torch.tensor(bundle.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std, device=device).view(1, 3, 1, 1)
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, sampler="shuffle", swa=False, lr=1e-5,
                         precision=precision, compile=args.compile, step_size=max(1, args.epochs)).validate()
    ends: list[tuple[float, float]] = []

    def mark(_model=None):
        if device.type == "cuda":
            torch.cuda.synchronize()
        ends.append(now())
        return 0.0, {}

    def run_ours() -> np.ndarray:  # (a) train.fit
        ends.clear()
        model = ClipClassifier.zero_shot(copy.deepcopy(bundle.model), bundle.tokenizer, names, templates)
        start = now()
        train.fit(model, images, np.zeros(n_images), cfg, normalize=norm, device=device, evaluate=mark,
                  progress=False)
        return epoch_spans(ends, start)

    def run_plain() -> np.ndarray:  # (b) plain open_clip loop, same weights, same images
        ends.clear()
        model = copy.deepcopy(bundle.model).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-4)
        loader = batch_loader(images, batch_size=args.batch_size, shuffle=True, pin_memory=device.type == "cuda")
        start = now()
        for _ in range(args.epochs):
            for x, y, _ in loader:
                x = (x.to(device).float() / 255 - mean) / std
                with autocast_for(device, precision):
                    img = model.encode_image(x, normalize=True)
                    txt = model.encode_text(tokens, normalize=True)
                    loss = F.cross_entropy((model.logit_scale.exp() * img @ txt.T).float(), y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss.item()
            mark()
        return epoch_spans(ends, start)

    # Interleaved repeats, the fastest epoch of each way: a shared machine's noise hits both alike.
    ours, plain = [], []
    for _ in range(args.repeats):
        ours.append(run_ours())
        plain.append(run_plain())
    ours, plain = np.concatenate(ours), np.concatenate(plain)

    print(f"{args.model} (random init) at {size} px, {n_images} images x {args.epochs} epochs, batch "
          f"{args.batch_size}, {len(names)} classes, device {device}, precision {precision}"
          f"{', compiled' if args.compile else ''}")
    rate = {name: n_images / spans.min(axis=0) for name, spans in (("ours", ours), ("plain", plain))}
    for label, key in (("ours (train.fit):    ", "ours"), ("plain open_clip loop:", "plain")):
        print(f"  {label}   {rate[key][0]:8.1f} images/s   ({rate[key][1]:8.1f} images per CPU-second)")
    print(f"RATIO ours / plain images per second: {rate['ours'][0] / rate['plain'][0]:.2f}x "
          f"(per CPU-second: {rate['ours'][1] / rate['plain'][1]:.2f}x); fastest of {len(ours)} epochs each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
