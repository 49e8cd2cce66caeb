"""load_rgb / decode_resized: draft decoding of JPEGs, exact open_clip-style resize, errors."""
from __future__ import annotations

import io
import re

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageDraw, ImageFile
from torchvision import transforms as T

from clipdg_nb._staging.jpeg import DRAFT_FACTOR, decode_resized, load_rgb

W, H = 1920, 1080
# Mean |draft - full| in levels (of 255) after the 224 px resize, over the images below.
# Measured: about 0.45 at draft_factor 2 and 1.0 at draft_factor 1 (sharp synthetic edges).
MEAN_DIFF_BOUND = {2: 1.0, 1: 2.0}


def synthetic_photo(seed: int, noise: float = 4.0) -> Image.Image:
    """Structured 1920x1080 content: smooth colour gradients, sharp shapes and lines, noise."""
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


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpeg")
    paths = []
    for seed in range(3):
        path = root / f"photo{seed}.jpg"
        synthetic_photo(seed).save(path, quality=90)
        paths.append(path)
    return paths


def reference_uint8(path, image_size: int) -> np.ndarray:
    """Independent reference: full PIL decode + torchvision Resize(BICUBIC) + CenterCrop."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    tf = T.Compose([T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(image_size)])
    return np.asarray(tf(rgb))


@pytest.mark.parametrize("draft_size", [64, 100, 224, 269, 270, 271, 448, 540, 541, 1080, 2000])
def test_draft_keeps_the_shorter_side_at_least_the_request(jpegs, draft_size):
    img = load_rgb(jpegs[0], draft_size=draft_size)
    assert img.mode == "RGB"
    scale = W // img.size[0] if img.size[0] < W else 1
    assert scale in (1, 2, 4, 8)
    assert img.size == (-(-W // scale), -(-H // scale))  # ceil(W / scale), ceil(H / scale)
    assert min(img.size) >= min(draft_size, H)
    # and PIL took the coarsest such scale: the next one would go below the request
    if scale < 8:
        assert -(-H // (2 * scale)) < draft_size or W // (2 * scale) < draft_size


def test_no_draft_decodes_full_size(jpegs):
    assert load_rgb(jpegs[0]).size == (W, H)


@pytest.mark.parametrize("image_size", [224, 64])
def test_full_decode_equals_open_clip_preprocessing(jpegs, image_size):
    out = decode_resized(jpegs[0], image_size, draft=False)
    assert out.shape == (image_size, image_size, 3) and out.dtype == np.uint8
    assert np.array_equal(out, reference_uint8(jpegs[0], image_size))
    # and open_clip's own eval transform (mean/std normalised) sees the same pixels
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    with Image.open(jpegs[0]) as im:
        expected = open_clip.image_transform(image_size, is_train=False, mean=mean, std=std)(im)
    ours = (torch.tensor(out).permute(2, 0, 1).float() / 255 - torch.tensor(mean).view(3, 1, 1)) \
        / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 1])
def test_draft_decode_is_close_to_full_decode(jpegs, factor):
    diffs = []
    for path in jpegs:
        draft = decode_resized(path, 224, draft=True, draft_factor=factor)
        assert draft.shape == (224, 224, 3) and draft.dtype == np.uint8
        full = reference_uint8(path, 224)
        diffs.append(np.abs(draft.astype(np.int16) - full).mean())
    assert max(diffs) < MEAN_DIFF_BOUND[factor]
    assert min(diffs) > 0  # the draft really decoded at a reduced scale


def test_default_factor_and_draft_engaged(jpegs):
    assert DRAFT_FACTOR == 2
    assert load_rgb(jpegs[0], draft_size=DRAFT_FACTOR * 224).size == (960, 540)
    with pytest.raises(ValueError):
        decode_resized(jpegs[0], 224, draft_factor=0.5)


def test_png_is_unaffected_by_draft(tmp_path):
    path = tmp_path / "photo.png"
    synthetic_photo(7).save(path)
    assert load_rgb(path, draft_size=224).size == (W, H)
    drafted = decode_resized(path, 224, draft=True)
    assert np.array_equal(drafted, decode_resized(path, 224, draft=False))
    assert np.array_equal(drafted, reference_uint8(path, 224))


def test_grayscale_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "gray.jpg"
    synthetic_photo(3).convert("L").save(path, quality=90)
    out = decode_resized(path, 224)
    assert out.shape == (224, 224, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


@pytest.mark.parametrize("draft", [True, False])
def test_truncated_jpeg_names_the_file(jpegs, tmp_path, monkeypatch, draft):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    data = jpegs[1].read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=re.escape(str(path))):
        decode_resized(path, 224, draft=draft)
    with open(path, "rb") as f, pytest.raises(OSError, match=re.escape(str(path))):
        load_rgb(f, draft_size=224)
    with pytest.raises(OSError, match="in-memory"):
        load_rgb(_Named(data[: len(data) // 2], "in-memory"))


def test_not_an_image_names_the_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    with pytest.raises(OSError, match=re.escape(str(path))):
        load_rgb(path)


class _Named(io.BytesIO):
    def __init__(self, data, name):
        super().__init__(data)
        self.name = name
