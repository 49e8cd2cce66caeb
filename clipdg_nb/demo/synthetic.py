"""Small datasets in the exact on-disk formats of WILDS's releases, for the offline default.

The unmodified WILDS loaders read what this writes (`download=False`). Each image carries a
learnable class signal (a textured object) on a domain-dependent scene; each dataset's writer
(`demo.writers.WRITERS`) writes its own files and domains mirroring the real shift, so ID-trained
models score lower OOD by an amount `shift` controls. Deterministic for a seed. This module is the
generic part: the config, staging beside the target, and the markers.

Profiles: `default` writes small images that train in minutes; `real` (`real_profile_config(n)`)
writes the real releases' sizes (each spec's `real_size`), upscaled with grain so the files
compress and decode like photographs, for measuring decode and cache costs.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..data import DATASETS, DEMO_DATASETS, data_present
from .writers import WRITERS

# A field that only one dataset reads is declared with `field(metadata={"dataset": name})`: it is
# left out of the other datasets' markers, so adding a dataset keeps the others' copies current.
# (The FMoW and iWildCam fields predate this rule and stay in every marker, as they always were.)


@dataclass
class SynthConfig:
    """Sizes and strengths of a synthetic copy. The defaults train in minutes on 2 CPU cores."""
    seed: int = 0
    image_size: int = 32
    shift: float = 1.0  # 0 = no domain shift; 1 = the default gap between ID and OOD
    signal: float = 1.0  # strength of the class object against the scene
    fmow_sizes: dict = field(default_factory=lambda: {
        "train": 1860, "id_val": 310, "id_test": 310, "val": 310, "test": 310})
    iwildcam_sizes: dict = field(default_factory=lambda: {
        "train": 2000, "id_val": 300, "id_test": 300, "val": 300, "test": 400})
    iwildcam_locations: dict = field(default_factory=lambda: {"id": 16, "val": 5, "test": 6})
    camelyon17_sizes: dict = field(default_factory=lambda: {"train": 1000, "id_val": 200, "val": 200, "test": 300},
                                   metadata={"dataset": "camelyon17"})
    camelyon17_slides_per_centre: int = field(default=4, metadata={"dataset": "camelyon17"})
    mixed_timestamps: bool = False  # write FMoW's real mix of ISO-8601 forms (plain pandas>=2 fails on it)
    profile: str = "default"  # "real": files at the real releases' sizes (each spec's real_size)

    def validate(self) -> "SynthConfig":
        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= 1024:
            raise ValueError(f"image_size={self.image_size!r} must be an int in [8, 1024] (224 for ViT-B/32)")
        if self.profile not in PROFILES:
            raise ValueError(f"profile={self.profile!r} is unknown; choose one of {list(PROFILES)}")
        for name in ("shift", "signal"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative number")
        for name, spec in DATASETS.items():  # `<dataset>_sizes`: one positive size per split it has
            attr = f"{name}_sizes"
            sizes = getattr(self, attr, None)
            if sizes is None:
                continue
            missing = set(spec.splits) - set(sizes)
            if missing or any(int(v) < 1 for v in sizes.values()):
                raise ValueError(f"{attr}={sizes!r} needs a positive size for each of {', '.join(spec.splits)}")
        if not isinstance(self.camelyon17_slides_per_centre, int) or not 1 <= self.camelyon17_slides_per_centre <= 20:
            raise ValueError(f"camelyon17_slides_per_centre={self.camelyon17_slides_per_centre!r} must be an int in "
                             "[1, 20] (the release has 20 patients a hospital)")
        if self.iwildcam_sizes["train"] < 182:
            raise ValueError("iwildcam_sizes['train'] must be >= 182 so that every iWildCam class occurs "
                             "(WILDS's loader requires labels 0..181 to be present)")
        return self


PROFILES = ("default", "real")


def real_profile_config(n_images: int = 300, n_eval: int | None = None, seed: int = 0,
                        render_size: int = 64, **fields) -> SynthConfig:
    """A `profile='real'` config: `n_images` train images per dataset (iWildCam: at least 182, so
    every class occurs) and `n_eval` (default n_images // 10, at least 5) in each other split."""
    fields.setdefault("camelyon17_sizes", {"train": int(n_images), **{s: max(5, int(n_images) // 10) if n_eval is None
                                                                       else int(n_eval) for s in ("id_val", "val", "test")}})
    n_train = int(n_images)
    n_eval = max(5, n_train // 10) if n_eval is None else int(n_eval)
    splits = ("id_val", "id_test", "val", "test")
    return SynthConfig(
        seed=seed, image_size=render_size, profile="real",
        fmow_sizes={"train": n_train, **{s: n_eval for s in splits}},
        iwildcam_sizes={"train": max(182, n_train), **{s: n_eval for s in splits}},
        iwildcam_locations={"id": 6, "val": 3, "test": 3}, **fields).validate()


def _marker(cfg: SynthConfig, name: str) -> dict:
    """The settings a copy of `name` was written with (its SYNTHETIC.json, less the generator)."""
    # the default profile is left out of the marker, so copies written without a profile stay current
    settings = asdict(cfg)
    if settings.get("profile") == "default":
        settings.pop("profile")
    for f in fields(cfg):
        if f.metadata.get("dataset", name) != name:
            settings.pop(f.name)
    return settings


def _finish(folder: Path, name: str, cfg: SynthConfig) -> Path:
    # The marker WILDS checks before deciding not to download; written last, so a half-written
    # folder is never taken for a complete one.
    spec = DATASETS[name]
    (folder / "SYNTHETIC.json").write_text(json.dumps({"generator": "clipdg_nb.synthetic", **_marker(cfg, name)},
                                                      indent=1))
    (folder / spec.release_marker).write_text(f"synthetic {spec.folder} written by clipdg_nb\n")
    return folder


def synthetic_is_current(root: Path, name: str, cfg: SynthConfig) -> bool:
    folder = Path(root) / DATASETS[name].folder
    marker = folder / "SYNTHETIC.json"
    if not (marker.exists() and data_present(root, name)):
        return False
    saved = json.loads(marker.read_text())
    saved.pop("generator", None)
    return saved == json.loads(json.dumps(_marker(cfg, name)))


def write_synthetic(root, datasets=DEMO_DATASETS, cfg: SynthConfig | None = None,
                    overwrite: bool = False) -> dict:
    """Write each dataset under `root` (skipped when an identical copy is there). Returns the folders.
    By default the offline demo's datasets; any name in `clipdg_nb.data.DATASETS` can be asked for."""
    cfg = (cfg or SynthConfig()).validate()
    out = {}
    for name in datasets:
        if name not in WRITERS:
            raise ValueError(f"dataset={name!r} has no synthetic writer; choose from {sorted(WRITERS)} (a writer "
                             "is one entry in clipdg_nb/demo/writers.py)")
        folder = Path(root) / DATASETS[name].folder
        if synthetic_is_current(root, name, cfg) and not overwrite:
            out[name] = folder
            continue
        if folder.exists() and not (folder / "SYNTHETIC.json").exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists and is not a synthetic copy: refusing to overwrite "
                                  "what may be the real dataset; choose another --root")
        # Write beside the target and swap in at the end: an interrupted write leaves no half folder.
        staging = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        WRITERS[name](staging, cfg)
        _finish(staging, name, cfg)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
        out[name] = folder
    return out
