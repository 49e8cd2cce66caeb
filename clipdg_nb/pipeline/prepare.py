"""`clipdg prepare <experiment.yaml>`: decode every split an experiment needs, once, with all cores.

The runs fill the decode cache lazily anyway; preparing first takes the decode out of the (GPU) runs
and lets parallel points start from a full cache instead of waiting on each other's locks.
"""
from __future__ import annotations

import os

from ..config import METHODS
from ..data import SPLITS, load_dataset
from ..images import prepare_splits
from ..inputs import image_size
from .experiment import Experiment, load_experiment
from .validate import point_configs


def plan(experiment: Experiment) -> dict[tuple, set]:
    """{(dataset, root_dir, cache_dir, image size): splits} over every point of every stage."""
    needs: dict[tuple, set] = {}
    for stage in experiment.stages:
        for point in stage.points:
            for cfg in point_configs(point) or []:  # 04_analysis builds none: it decodes nothing
                root, cache = experiment.root / cfg.root_dir, experiment.root / cfg.cache_dir  # absolute stays
                splits = set(cfg.eval_splits)
                if METHODS[cfg.method].trains != "nothing":
                    splits |= {"train", cfg.select_split}
                needs.setdefault((cfg.dataset, str(root), str(cache / "decoded"), image_size(cfg)), set()).update(splits)
    return needs


def prepare(experiment: Experiment | str | os.PathLike, workers: int | None = None, progress: bool = True,
            log=print) -> list[dict]:
    """Fill the decode cache of every split the experiment's runs read; returns what each did."""
    if not isinstance(experiment, Experiment):
        experiment = load_experiment(experiment)
    done = []
    for (dataset, root, cache, size), splits in sorted(plan(experiment).items()):
        order = [s for s in SPLITS if s in splits]
        log(f"{dataset} at {size} px: {', '.join(order)} -> {cache}")
        result = prepare_splits(load_dataset(dataset, root), order, size, cache, workers=workers, progress=progress)
        done += [{"dataset": dataset, "image_size": size, "split": s, **r} for s, r in result.items()]
    return done
