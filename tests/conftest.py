"""Shared fixtures: small synthetic WILDS folders, written once per test session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a hub
os.environ.setdefault("OMP_NUM_THREADS", "2")

from clipdg_nb.demo.synthetic import SynthConfig, write_synthetic  # noqa: E402

SMALL = SynthConfig(
    seed=0, image_size=32,
    fmow_sizes={"train": 248, "id_val": 62, "id_test": 62, "val": 62, "test": 62},
    iwildcam_sizes={"train": 364, "id_val": 60, "id_test": 60, "val": 60, "test": 60},
    iwildcam_locations={"id": 6, "val": 3, "test": 3},
)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wilds")
    write_synthetic(root, cfg=SMALL)
    return root


@pytest.fixture(scope="session")
def fmow(synth_root):
    from clipdg_nb.data import load_dataset
    return load_dataset("fmow", synth_root)


@pytest.fixture(scope="session")
def iwildcam(synth_root):
    from clipdg_nb.data import load_dataset
    return load_dataset("iwildcam", synth_root)


CAMELYON17 = SynthConfig(seed=0, image_size=16, camelyon17_sizes={"train": 120, "id_val": 30, "val": 30, "test": 40},
                         camelyon17_slides_per_centre=2)


@pytest.fixture(scope="session")
def camelyon17_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("camelyon17")
    write_synthetic(root, datasets=["camelyon17"], cfg=CAMELYON17)
    return root


@pytest.fixture(scope="session")
def camelyon17(camelyon17_root):
    from clipdg_nb.data import load_dataset
    return load_dataset("camelyon17", camelyon17_root)


EASY = SynthConfig(seed=1, image_size=32, shift=0.3,
                   fmow_sizes={"train": 620, "id_val": 186, "id_test": 310, "val": 124, "test": 124})


@pytest.fixture(scope="session")
def easy_root(tmp_path_factory):
    """FMoW with 10 images a class and a mild shift: enough for a tiny model to learn in seconds."""
    root = tmp_path_factory.mktemp("wilds_easy")
    write_synthetic(root, datasets=["fmow"], cfg=EASY)
    return root


@pytest.fixture
def run_kwargs(tmp_path):
    """Config fields that keep a run small, offline and inside the test's folder."""
    return dict(output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
                model="clipdg-tiny-vit", pretrained=None, vision_arch="tiny", vision_weights=None,
                batch_size=64, eval_batch_size=256)
