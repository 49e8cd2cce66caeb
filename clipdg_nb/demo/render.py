"""Pixels of the synthetic datasets: class objects on domain scenes, and how they are saved (the
default profile's small PNGs, or the real profile's full-size PNGs and JPEGs with sensor grain)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_JPEG_QUALITY = 95
REAL_JPEG_QUALITY = 90  # the real profile (sizes: each dataset spec's `real_size`)


@dataclass(frozen=True)
class Scene:
    """A domain: the background an object sits on and the camera's colour response."""
    bg_color: tuple
    bg_angle: float
    bg_freq: float
    gain: tuple  # per-channel multiplicative cast
    contrast: float
    noise: float
    gray: bool = False  # e.g. infrared night shots at a camera trap


def class_prototypes(n_classes: int, seed: int, namespace: str) -> dict:
    """Per-class colours, orientation and frequency. `namespace` keeps datasets independent."""
    rng = np.random.default_rng([seed, sum(map(ord, namespace)), 7])
    return {
        "color_a": rng.uniform(0.05, 0.95, (n_classes, 3)),
        "color_b": rng.uniform(0.05, 0.95, (n_classes, 3)),
        "angle": rng.uniform(0, np.pi, n_classes),
        "freq": rng.uniform(1.0, 4.0, n_classes),
    }


def random_scene(rng: np.random.Generator, spread: float, gray_prob: float = 0.0) -> Scene:
    """A scene whose colour cast and contrast deviate from neutral by about `spread`."""
    return Scene(
        bg_color=tuple(rng.uniform(0.1, 0.9, 3)),
        bg_angle=float(rng.uniform(0, np.pi)),
        bg_freq=float(rng.uniform(0.5, 3.0)),
        gain=tuple(np.clip(1 + rng.normal(0, spread, 3), 0.2, 2.5)),
        contrast=float(np.clip(1 + rng.normal(0, spread / 2), 0.3, 1.5)),
        noise=float(abs(rng.normal(0.03, 0.02 + spread / 10))),
        gray=bool(rng.random() < gray_prob),
    )


def render(protos: dict, label: int, scene: Scene, rng: np.random.Generator, size: int,
           signal: float = 1.0) -> np.ndarray:
    """One image (uint8 HxWx3): a textured disc of the class on the scene's background."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    bg_wave = 0.5 + 0.5 * np.sin(2 * np.pi * scene.bg_freq * (xx * np.cos(scene.bg_angle) + yy * np.sin(scene.bg_angle))
                                 + rng.uniform(0, 2 * np.pi))
    img = np.asarray(scene.bg_color) * (0.7 + 0.3 * bg_wave[..., None])
    cx, cy = rng.uniform(0.35, 0.65, 2)
    radius = rng.uniform(0.22, 0.34)
    mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < radius ** 2)[..., None] * min(1.0, signal)
    angle = protos["angle"][label] + rng.normal(0, 0.1)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * protos["freq"][label] / (2 * radius) * (
        (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    obj = protos["color_a"][label] * wave[..., None] + protos["color_b"][label] * (1 - wave[..., None])
    img = img * (1 - mask) + obj * mask
    img = (img - 0.5) * scene.contrast + 0.5
    img = img * np.asarray(scene.gain)
    if scene.gray:
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    img = img + rng.normal(0, scene.noise, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def image_rng(seed: int, namespace: str, index: int) -> np.random.Generator:
    """The random stream of one image (its pixels and its metadata), fixed by (seed, dataset, index)."""
    return np.random.default_rng([seed, sum(map(ord, namespace)), 11, index])


def output_size(cfg, spec) -> tuple[int, int]:
    """(width, height) of the files written: the release's (`spec.real_size`) in the real profile."""
    return tuple(spec.real_size) if cfg.profile == "real" else (cfg.image_size, cfg.image_size)


class Grain:
    """Photographic grain for the real profile: a few precomputed full-size fields (fine noise plus
    coarse blotches), picked and shifted per image, so writing hundreds of 2 MP images stays fast."""

    def __init__(self, seed: int, namespace: str, size: tuple[int, int], n_fields: int = 3):
        w, h = size
        rng = np.random.default_rng([seed, sum(map(ord, namespace)), 12])
        fields = []
        for _ in range(n_fields):
            fine = rng.normal(0, 4, (h, w))
            cw, ch = max(1, w // 16), max(1, h // 16)
            coarse = Image.fromarray(rng.normal(0, 18, (ch, cw)).astype(np.float32), mode="F")
            coarse = np.asarray(coarse.resize((w, h), Image.BILINEAR))
            fields.append(np.clip(fine + coarse, -60, 60).astype(np.int16))
        self.fields = fields

    def apply(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        field = self.fields[int(rng.integers(len(self.fields)))]
        field = np.roll(field, (int(rng.integers(field.shape[0])), int(rng.integers(field.shape[1]))), axis=(0, 1))
        out = np.asarray(img, dtype=np.int16) + field[..., None]
        return np.clip(out, 0, 255).astype(np.uint8)


def save_image(pixels: np.ndarray, path: Path, cfg, namespace: str, index: int, grain, size: tuple[int, int]) -> None:
    """The default profile saves the render as is; the real profile upscales it to `size` and adds
    grain. JPEG or PNG by the file's suffix (the release's format)."""
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    if cfg.profile != "real":
        if jpeg:
            Image.fromarray(pixels).save(path, quality=DEFAULT_JPEG_QUALITY)
        else:
            Image.fromarray(pixels).save(path)
        return
    img = Image.fromarray(pixels).resize(tuple(size), Image.BICUBIC)
    # its own stream, so the metadata (drawn from the image's rng) is the same in both profiles
    img = Image.fromarray(grain.apply(img, image_rng(cfg.seed, namespace, index + 10_000_000)))
    if jpeg:
        img.save(path, quality=REAL_JPEG_QUALITY)
    else:
        img.save(path)
