"""Encode once vs forward every step: a linear head on a frozen CLIP image tower, both ways in one run.

    python benchmarks/bench_probe.py             # tiny CLIP, synthetic FMoW (620 train images, 32 px)

(a) end to end: the image tower frozen, a linear head trained by minibatch SGD (Adam by default;
    `--optimizer sgd` for momentum SGD) over the training images for `--epochs` epochs, every
    step running the images through the tower (decoding is cached for both ways);
(b) cached features: the library's probe, `cached_features` (encode each split once, on disk)
    + `fit_linear_probe` (L-BFGS, regularisation chosen on id_val among `--cs`).
Prints seconds for each, the ratio, and both heads' id_test accuracy.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_ROOT, batch_loader, machine, parse_args, synthetic_fmow  # noqa: E402

from clipdg_nb import methods  # noqa: E402
from clipdg_nb.data import load_dataset  # noqa: E402
from clipdg_nb.devices import resolve_device  # noqa: E402
from clipdg_nb.config import FinetuneConfig  # noqa: E402
from clipdg_nb.data import class_names, split_indices  # noqa: E402
from clipdg_nb.evaluate import predict_logits  # noqa: E402
from clipdg_nb.images import Normalize  # noqa: E402
from clipdg_nb.models import ClipClassifier, fit_linear_probe  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT / "probe")
    p.add_argument("--model", default="clipdg-tiny-vit", help="open_clip model (random init unless --pretrained)")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--images", type=int, default=620, help="synthetic train images (10 a class)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of end-to-end head training")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="stochastic optimizer of the head")
    p.add_argument("--lr", type=float, default=1e-2, help="its learning rate")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--cs", type=float, nargs="+", default=[1.0, 100.0, 10000.0],
                   help="probe strengths tried (the tests' values for the tiny random tower)")
    p.add_argument("--device", default="cpu")
    args = parse_args(p, argv, root=DEFAULT_ROOT / "smoke" / "probe", images=124, epochs=1, cs=[1.0])

    print(f"machine: {machine()}")
    cache_dir = args.root / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cfg = FinetuneConfig(root_dir=str(args.root), model=args.model, pretrained=args.pretrained, method="linear_probe",
                         probe_cs=tuple(args.cs), cache_dir=str(cache_dir), device=args.device,
                         eval_batch_size=256).validate()
    bundle, pre = methods._clip(cfg)
    size = bundle.image_size
    ds = synthetic_fmow(args.root, size, args.images, shift=0.3)
    ctx = methods.Context(cfg, load_dataset("fmow", args.root), resolve_device(cfg.device))
    device = ctx.device
    y = torch.as_tensor(np.asarray(ds.y_array))
    train_idx, val_idx, test_idx = (split_indices(ds, s) for s in ("train", "id_val", "id_test"))
    for s in ("train", "id_val", "id_test"):  # decode once up front: neither way pays for decoding
        ctx.images(split_indices(ds, s), size)
    norm = Normalize(bundle.mean, bundle.std)
    n_classes = len(class_names("fmow"))

    # (a) end to end: forward through the frozen tower at every step
    torch.manual_seed(0)
    head = torch.nn.Linear(bundle.model.visual.output_dim, n_classes).to(device)
    clf = ClipClassifier.from_linear_probe(bundle.model, head.weight.detach(), head.bias.detach()).to(device)
    clf.visual.requires_grad_(False)
    opt = torch.optim.Adam(clf.head.parameters(), lr=args.lr) if args.optimizer == "adam" else \
        torch.optim.SGD(clf.head.parameters(), lr=args.lr, momentum=0.9)
    loader = batch_loader(ctx.images(train_idx, size), batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    for _ in range(args.epochs):
        clf.train()
        for x, yb, _ in loader:
            with torch.no_grad():
                feats = clf.features(norm(x.to(device)))
            loss = F.cross_entropy(clf.head(feats), yb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    e2e_s = time.perf_counter() - started
    e2e_acc = (predict_logits(clf, ctx.images(test_idx, size), norm, device).argmax(1) == y[test_idx]).float().mean()

    # (b) the library's probe: features once (train + the selection split), then L-BFGS per C
    started = time.perf_counter()
    f_train = ctx.features(bundle.model, pre, "train")
    f_val = ctx.features(bundle.model, pre, "id_val")
    encode_s = time.perf_counter() - started
    probe = fit_linear_probe(f_train, y[train_idx], f_val, y[val_idx], n_classes=n_classes, Cs=cfg.probe_cs)
    probe_s = time.perf_counter() - started
    f_test = ctx.features(bundle.model, pre, "id_test")
    probe_acc = (probe.logits(f_test).argmax(1).cpu() == y[test_idx]).float().mean()

    print(f"{args.model} ({'random init' if args.pretrained is None else args.pretrained}), {len(train_idx)} train "
          f"images at {size} px, {n_classes} classes, device {device}")
    print(f"  end-to-end head, {args.epochs} epochs {args.optimizer}:  {e2e_s:7.2f} s  "
          f"({e2e_s / args.epochs:.2f} s an epoch)   id_test acc {e2e_acc:.3f}")
    print(f"  cached features + fit_linear_probe ({len(cfg.probe_cs)} Cs): {probe_s:7.2f} s  (encode train+id_val "
          f"{encode_s:.2f} s, L-BFGS {probe_s - encode_s:.2f} s)   id_test acc {probe_acc:.3f}  (C={probe.C:g})")
    print(f"RATIO end-to-end / cached-feature probe time: {e2e_s / probe_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
