"""JPEG decode for the cache: full decode + resize vs draft (DCT-scaled) decode + resize.

Writes `--images` synthetic 1920x1080 JPEGs (gradients, shapes, lines, noise; quality 90) under
outputs/bench/jpeg/ once, then decodes each to 224 px the way open_clip's eval preprocessing
does (Resize BICUBIC + CenterCrop): from the full decode, and from a draft decode at the
default factor (shorter side >= 2 x 224) and at factor 1 (>= 224). Each way is timed
`--repeats` times, interleaved, best kept. Prints images/s, the mean abs pixel difference to the
full decode after the resize, and `RATIO jpeg_draft: <x>x` (default factor).

    .venv/bin/python benchmarks/bench_jpeg_draft.py [--images 24] [--size 224] [--noise 4]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_ROOT, parse_args  # noqa: E402

from clipdg_nb.images.decode import DRAFT_FACTOR, _decode_image  # noqa: E402

W, H = 1920, 1080


def synthetic_photo(seed: int, noise: float) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    img = np.stack([127 + 100 * np.sin(x / W * (3 + i) * np.pi + phase[i]) * np.cos(y / H * (2 + i) * np.pi)
                    for i in range(3)], axis=-1)
    img += rng.normal(0, noise, img.shape)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(30):
        x0, y0 = int(rng.integers(0, W - 200)), int(rng.integers(0, H - 200))
        box = [x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        draw.line([int(v) for v in rng.integers(0, H, 4)], fill=colour, width=3)
    return im


def write_jpegs(root: Path, n: int, noise: float) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"photo_{i:03d}_noise{noise:g}.jpg" for i in range(n)]
    for i, path in enumerate(paths):
        if not path.exists():
            synthetic_photo(i, noise).save(path, quality=90)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--noise", type=float, default=4.0, help="std of the pixel noise (file size grows with it)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--root", type=Path, default=Path("outputs") / "bench" / "jpeg")
    args = parse_args(ap, argv, images=2, repeats=1, root=DEFAULT_ROOT / "smoke" / "jpeg")
    paths = write_jpegs(args.root, args.images, args.noise)
    ways = {"full decode": dict(draft=False),
            f"draft x{DRAFT_FACTOR:g} (default)": dict(draft=True),
            "draft x1": dict(draft=True, draft_factor=1)}
    decode_resized = _decode_image  # the decode cache's own function
    best = {name: float("inf") for name in ways}
    outputs = {}
    for _ in range(args.repeats):
        for name, kw in ways.items():
            started = time.perf_counter()
            outputs[name] = [decode_resized(str(p), args.size, **kw) for p in paths]
            best[name] = min(best[name], time.perf_counter() - started)
    mean_kb = np.mean([p.stat().st_size for p in paths]) / 1e3
    print(f"{args.images} synthetic {W}x{H} JPEGs (quality 90, noise {args.noise:g}, mean {mean_kb:.0f} kB) "
          f"-> {args.size} px, PIL {Image.__version__}")
    full = outputs["full decode"]
    for name, took in best.items():
        diff = np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(outputs[name], full)])
        print(f"{name}: {args.images / took:,.1f} images/s, mean abs pixel difference to full decode "
              f"{diff:.3f} levels ({diff / 255:.4f} of the range)")
    base = best["full decode"]
    print(f"RATIO jpeg_draft: {base / best[f'draft x{DRAFT_FACTOR:g} (default)']:.1f}x")
    print(f"RATIO jpeg_draft_x1: {base / best['draft x1']:.1f}x")


if __name__ == "__main__":
    main()
