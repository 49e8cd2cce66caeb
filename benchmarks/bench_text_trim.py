"""Prompt encoding: `model.encode_text` on the full context vs `encode_text_trimmed`.

The 182 iWildCam class prompts ("this is a photo of {class}") through the text tower of a
randomly initialised ViT-B-32 (open_clip), forward + backward (as when fine-tuning with the
text tower unfrozen), or forward only with --forward-only. Each way is timed `--repeats` times,
interleaved, best time kept (the first round doubles as warm-up: a full-context step takes
tens of seconds on one CPU core). Also checks that both give the same features. Prints prompts/s
of each and `RATIO text_trim: <x>x`.

    .venv/bin/python benchmarks/bench_text_trim.py [--device cuda] [--threads 1] [--model ViT-B-32]
"""
from __future__ import annotations

import argparse
import sys
import csv
from pathlib import Path

import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_times, parse_args  # noqa: E402

from clipdg_nb.models.text import encode_text_trimmed, trim_tokens  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "clipdg_nb" / "data_files"


def iwildcam_prompts() -> list[str]:
    with open(DATA / "iwildcam_labels.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["y"]))
    return [f"this is a photo of {r['english']}" for r in rows]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--forward-only", action="store_true")
    args = parse_args(ap, argv, model="clipdg-tiny-vit", repeats=1)
    torch.set_num_threads(args.threads)
    open_clip.add_model_config(DATA / "model_configs")
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, pretrained=None).to(dev)
    prompts = iwildcam_prompts()
    tokens = open_clip.get_tokenizer(args.model)(prompts).to(dev)
    length = trim_tokens(tokens).shape[1]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run(encode):
        def step():
            model.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(not args.forward_only):
                features = encode(model, tokens)
                if not args.forward_only:
                    features.square().sum().backward()
            return features
        return step

    ways = {"full context": run(lambda m, t: m.encode_text(t)),
            "trimmed": run(encode_text_trimmed)}
    with torch.no_grad():
        diff = (model.encode_text(tokens) - encode_text_trimmed(model, tokens)).abs().max().item()
    best = best_times(ways, args.repeats, sync)
    what = "forward" if args.forward_only else "forward+backward"
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{len(prompts)} iWildCam prompts, {args.model} text tower (random init), {what}, "
          f"{dev_name} (torch {torch.__version__})")
    print(f"context {tokens.shape[1]} -> {length} tokens; max abs feature difference {diff:.2e}")
    for name, took in best.items():
        print(f"{name}: {len(prompts) / took:,.0f} prompts/s ({took * 1e3:.0f} ms)")
    print(f"RATIO text_trim: {best['full context'] / best['trimmed']:.1f}x")


if __name__ == "__main__":
    main()
