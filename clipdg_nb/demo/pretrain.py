"""A miniature pretraining, so the offline demo's CLIP means something.

A tiny open_clip model is trained contrastively on synthetic images of both synthetic datasets'
class concepts (the objects `synthetic.py` draws) on random scenes unlike any target domain, with
captions that never use the target prompts, so zero-shot transfer is real but imperfect. The
vision-only twin is the same tower trained on concept labels. Both are cached under
`outputs/cache/pretrain/`, keyed by their settings, deterministic for a seed, with each weights
file's sha256 in `meta.json`, checked on reuse (a mismatch pretrains again, `CacheRebuiltWarning`).

`coverage` < 1 (`clipdg pretrain-tiny --coverage C`): captions name only a seeded share C of the
concepts; the images and labels, hence the supervised twin, are unchanged. 1.0 is the original.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from ..data import class_names
from ..fingerprint import CacheRebuiltWarning, file_digest, identity_mismatch
from ..models import TINY_MODELS, load_clip, save_weights
from ..paths import write_json
from .render import class_prototypes, random_scene, render

CAPTION_TEMPLATES = (
    "a photo of a {c}.", "a picture of the {c}.", "{c}", "an image containing {c}.", "a drawing of a {c}.",
    "a close-up of the {c}.", "there is a {c} here.", "a snapshot of {c}.", "{c}, seen clearly.",
    "a small {c}.", "a large {c}.", "the {c} in a scene.", "an example of {c}.", "my favourite {c}.",
)

# captions of the concepts left unnamed at coverage < 1: true of every image, naming no concept
GENERIC_CAPTIONS = (
    "a photo of something.", "an object on a background.", "a picture of a thing.", "something in a scene.",
    "an image of an object.", "a close-up of something.", "there is something here.", "a snapshot.",
)


@dataclass(frozen=True)
class PretrainConfig:
    model: str = "clipdg-tiny-vit"
    data_seed: int = 0  # the synthetic datasets' seed: the class objects come from it
    seed: int = 0
    n_images: int = 8_000
    image_size: int = 32
    steps: int = 500
    batch_size: int = 128
    lr: float = 2e-3
    supervised_steps: int = 300
    scene_spread: float = 0.25
    coverage: float = 1.0  # share of the concepts the captions name (1.0: every one, the default corpus)

    def __post_init__(self):
        if not 0.0 <= self.coverage <= 1.0:
            raise ValueError(f"coverage={self.coverage!r}: a share of the concepts, in [0, 1]")

    def key(self) -> str:
        settings = asdict(self)
        if self.coverage == 1.0:  # the full corpus keeps the key it had before coverage existed
            settings.pop("coverage")
        blob = json.dumps(settings, sort_keys=True) + open_clip.__version__ + "v1"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def folder(self, cache_dir: str | os.PathLike) -> Path:
        """Where the weights live: `pretrain/` for the full corpus, `pretrain/coverage-0.5/` otherwise."""
        base = Path(cache_dir) / "pretrain"
        return base if self.coverage == 1.0 else base / f"coverage-{self.coverage:g}"


def concepts() -> list[tuple[str, int, str]]:
    """(dataset, label, readable name) for every class of both datasets."""
    return [(name, y, c) for name in ("fmow", "iwildcam") for y, c in enumerate(class_names(name))]


def named_concepts(cfg: PretrainConfig) -> np.ndarray:
    """Ids (into `concepts()`) of the concepts the captions name: a seeded share `cfg.coverage` of each
    dataset's classes (stratified, so both lose the same share), nested (a lower coverage names a
    subset of what a higher one names)."""
    items, named = concepts(), []
    for d, name in enumerate(("fmow", "iwildcam")):
        ids = np.array([k for k, item in enumerate(items) if item[0] == name])
        order = np.random.default_rng([cfg.seed, 33, d]).permutation(len(ids))
        named.extend(ids[order[:int(round(cfg.coverage * len(ids)))]])
    return np.sort(np.array(named, dtype=np.int64))


def make_corpus(cfg: PretrainConfig):
    """uint8 images [N, H, W, 3], concept ids [N], captions [N]; deterministic for the seeds.
    The images and concept ids do not depend on `cfg.coverage`; only the captions of concepts left
    unnamed change, to a generic one ("an object on a background.")."""
    items = concepts()
    named = set(named_concepts(cfg).tolist())
    protos = {name: class_prototypes(len(class_names(name)), cfg.data_seed, name) for name in ("fmow", "iwildcam")}
    rng = np.random.default_rng([cfg.seed, 31])
    concept_ids = rng.integers(0, len(items), cfg.n_images)
    images = np.empty((cfg.n_images, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    captions = []
    for i, k in enumerate(concept_ids):
        dataset, label, name = items[k]
        img_rng = np.random.default_rng([cfg.seed, 32, i])
        # every image gets its own scene: no target domain is ever shown as such
        scene = random_scene(img_rng, cfg.scene_spread, gray_prob=0.1)
        images[i] = render(protos[dataset], label, scene, img_rng, cfg.image_size)
        template = CAPTION_TEMPLATES[img_rng.integers(len(CAPTION_TEMPLATES))]
        caption = template.format(c=name.lower() if img_rng.random() < 0.5 else name)
        if k not in named:  # drawn after the image, so the image set is the same at every coverage
            caption = GENERIC_CAPTIONS[img_rng.integers(len(GENERIC_CAPTIONS))]
        captions.append(caption)
    return images, concept_ids, captions


def _normalise(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    x = images_uint8.permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def _drop_random_init_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _random_init_expected():
    """Mute open_clip's "No pretrained weights loaded ... Model initialized randomly." (a root-logger
    warning): here the tiny model starts from random weights on purpose, and the log says so."""
    root = logging.getLogger()
    root.addFilter(_drop_random_init_warning)
    try:
        yield
    finally:
        root.removeFilter(_drop_random_init_warning)


def _fresh_tiny(cfg: PretrainConfig):
    with _random_init_expected():
        return load_clip(cfg.model, None)


def pretrain_clip(cfg: PretrainConfig, images, captions, log=print):
    """Contrastive (CLIP) training of the tiny model on the corpus."""
    torch.manual_seed(cfg.seed)
    bundle = _fresh_tiny(cfg)
    model = bundle.model.train()
    tokens = bundle.tokenizer(captions)
    pixels = torch.from_numpy(images)
    # fused: one kernel for all parameters (the 49k-token embedding makes per-tensor Adam the bottleneck)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.1, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    for step in range(cfg.steps):
        batch = torch.randint(0, len(pixels), (cfg.batch_size,), generator=gen)
        x = _augment(_normalise(pixels[batch], bundle.mean, bundle.std), gen)
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tokens[batch], normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
        target = torch.arange(len(batch))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"  clip step {step + 1}/{cfg.steps}: contrastive loss {loss.item():.3f}")
    return bundle


def pretrain_supervised(cfg: PretrainConfig, images, concept_ids, log=print):
    """The same image tower trained with labels (one class per concept): the vision-only baseline."""
    torch.manual_seed(cfg.seed)
    bundle = _fresh_tiny(cfg)
    visual = bundle.model.visual.train()
    head = torch.nn.Linear(visual.output_dim, len(concepts()))
    params = list(visual.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.supervised_steps, pct_start=0.1)
    pixels, labels = torch.from_numpy(images), torch.as_tensor(concept_ids)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for step in range(cfg.supervised_steps):
        batch = torch.randint(0, len(pixels), (cfg.batch_size,), generator=gen)
        x = _augment(_normalise(pixels[batch], bundle.mean, bundle.std), gen)
        loss = F.cross_entropy(head(visual(x)), labels[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.supervised_steps - 1:
            log(f"  supervised step {step + 1}/{cfg.supervised_steps}: loss {loss.item():.3f}")
    return bundle  # the full CLIP state with a supervised image tower (its text tower is untrained)


# Intra-op threads of the pretraining, whatever the core count: float sums split over threads, so
# the weights (and every number of the demo after them) would otherwise depend on the core count.
PRETRAIN_THREADS = 2


@contextlib.contextmanager
def _fixed_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class PretrainedTiny:
    clip: Path  # weights file for `pretrained=` of the CLIP model
    vision: Path  # weights file of the supervised image tower (vision_arch='clip-visual', vision_weights=)
    meta: dict


def pretrain_tiny(cache_dir: str | os.PathLike = "outputs/cache", cfg: PretrainConfig | None = None,
                  force: bool = False, log=print) -> PretrainedTiny:
    """Pretrain (or reuse from the cache) the tiny CLIP and its supervised vision-only counterpart."""
    cfg = cfg or PretrainConfig()
    if cfg.model not in TINY_MODELS:
        raise ValueError(f"model={cfg.model!r}: the miniature pretraining is for {TINY_MODELS}")
    folder = cfg.folder(cache_dir)
    clip_path, vision_path, meta_path = folder / "tiny-clip.safetensors", folder / "tiny-vision.safetensors", folder / "meta.json"
    files = {"clip": clip_path, "vision": vision_path}
    if not force and meta_path.exists() and clip_path.exists() and vision_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == cfg.key():
            wrong = identity_mismatch(meta.get("sha256"), {n: file_digest(p, cache_dir) for n, p in files.items()})
            if wrong is None:
                return PretrainedTiny(clip_path, vision_path, meta)
            warnings.warn(f"pretraining cache {meta_path} does not name the weights files beside it ({wrong}); "
                          "pretraining again", CacheRebuiltWarning, stacklevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    named = named_concepts(cfg)
    log(f"pretraining {cfg.model} from random weights on a synthetic caption corpus ({cfg.n_images} images, {len(concepts())} concepts,"
        f" captions naming {len(named)}: coverage {cfg.coverage:g})")
    images, concept_ids, captions = make_corpus(cfg)
    with _fixed_threads(PRETRAIN_THREADS):
        clip = pretrain_clip(cfg, images, captions, log)
        supervised = pretrain_supervised(cfg, images, concept_ids, log)
    meta_path.unlink(missing_ok=True)  # the meta file is the completion marker: written last
    save_weights(clip.model, clip_path)
    save_weights(supervised.model, vision_path)
    meta = {"key": cfg.key(), "config": asdict(cfg), "coverage": cfg.coverage,
            "named_concepts": [f"{concepts()[k][0]}:{concepts()[k][2]}" for k in named],
            "seconds": round(time.perf_counter() - start, 1), "example_captions": captions[:5],
            "sha256": {n: file_digest(p, cache_dir) for n, p in files.items()}}
    write_json(meta_path, meta)
    log(f"pretrained in {meta['seconds']} s -> {folder}")
    return PretrainedTiny(clip_path, vision_path, meta)
