"""Decode-once cache: same pixels as open_clip's eval preprocessing, reused, never half-written."""
from __future__ import annotations

import numpy as np
import open_clip
import torch

from clipdg_nb.data import split_indices
from clipdg_nb.images import ArrayImages, Normalize, PILImages, decode_split, image_split


def test_decoded_and_normalised_equals_open_clip_preprocess(fmow, tmp_path):
    size, mean, std = 24, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    preprocess = open_clip.image_transform(size, is_train=False, mean=mean, std=std)
    idx = split_indices(fmow, "id_val")[:8]
    arr = decode_split(fmow, idx, size, cache_dir=tmp_path)
    ours = Normalize(mean, std)(torch.from_numpy(np.array(arr)))
    ref = torch.stack([preprocess(fmow.get_input(int(i))) for i in idx])
    assert ours.shape == ref.shape == (8, 3, size, size)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_cache_is_reused_and_keyed_by_size(fmow, tmp_path):
    idx = split_indices(fmow, "id_val")[:5]
    a = decode_split(fmow, idx, 16, cache_dir=tmp_path)
    entries = sorted(tmp_path.glob("*.np[yz]"))
    # one entry: meta (identity, bitmap, checksums), rows
    assert [f.name.rsplit("-", 1)[1].split(".", 1)[1] for f in entries] == ["meta.npz", "npy"]
    assert not any(f.name.endswith(".tmp") for f in tmp_path.iterdir())
    mtimes = [f.stat().st_mtime_ns for f in entries]
    b = decode_split(fmow, idx, 16, cache_dir=tmp_path)
    assert np.array_equal(a, b) and [f.stat().st_mtime_ns for f in entries] == mtimes
    decode_split(fmow, idx, 20, cache_dir=tmp_path)  # another size: another entry
    decode_split(fmow, idx[:3], 16, cache_dir=tmp_path)  # a subset of the same split: the same entry
    assert len(list(tmp_path.glob("*.np[yz]"))) == 4 and [f.stat().st_mtime_ns for f in entries] == mtimes


def test_pil_path_equals_cached_path(iwildcam, tmp_path):
    idx = split_indices(iwildcam, "test")[:6]
    cached = image_split(iwildcam, idx, 32, cache_dir=tmp_path)
    pil = image_split(iwildcam, idx, 32, cache=False)
    assert isinstance(cached, ArrayImages) and isinstance(pil, PILImages)
    for k in range(len(idx)):
        (xa, ya, ia), (xb, yb, ib) = cached[k], pil[k]
        assert torch.equal(xa, xb) and ya == yb and ia == ib == idx[k]
