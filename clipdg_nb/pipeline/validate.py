"""An experiment checked before anything runs: every point's config, the files it reads, the
folders it writes.

Each point's parameters go through the code its notebook will run (the table `VALIDATORS`); every
problem of every point is raised together, naming the file, stage, point and key. A failing value is
put back to its default so the rest is still checked, and each distinct weights file's header is
read once, so a wrong file stops here.
"""
from __future__ import annotations

import ast
import functools
import numbers
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from ..config import FinetuneConfig, ZeroShotConfig, from_namespace, sweep_configs, tuned_lists
from ..data import DATASETS, SPLITS, check_select_split, data_present, dataset_spec
from ..paths import rooted_at, unwritable
from .experiment import Experiment, ExperimentError, Point, Stage, notebook_parameters
from .oserrors import size_text

_KEY = re.compile(r"\s*([A-Za-z_]\w*)")
_NAMED = re.compile(r"\b([A-Za-z_]\w*)=")


class ValidationError(ExperimentError):
    """One or more points of an experiment would fail; `problems` lists them all."""

    def __init__(self, path, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in {path}; nothing was run:\n  " + "\n  ".join(self.problems))


def _soups(ns: Mapping) -> list:
    from ..soups import ingredient_configs  # torch: only when a soup stage is checked

    return ingredient_configs(ns, ns.get("lrs"))


def _analysis(ns: Mapping) -> list:
    if ns.get("dataset") not in DATASETS:
        raise ValueError(f"dataset={ns.get('dataset')!r} is not valid; choose one of {list(DATASETS)}")
    check_select_split(ns["dataset"], ns.get("select_split"))  # where learning rates are chosen
    for key in ("id_split", "ood_split"):
        if ns.get(key) not in SPLITS:
            raise ValueError(f"{key}={ns.get(key)!r} is not a split; choose one of {list(SPLITS)}")
    level = ns.get("level")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level={level!r} must be a number in (0, 1), e.g. 0.95")
    return []


@dataclass(frozen=True)
class Validator:
    check: Callable[[Mapping], list]  # namespace -> the configs it builds; raises ValueError naming the key
    aliases: dict = field(default_factory=dict)  # a key named in an error -> the parameter that set it


# Notebook file name -> how its parameters are checked. Other notebooks get the path checks only.
VALIDATORS = {
    "01_zero_shot.ipynb": Validator(lambda ns: [from_namespace(ZeroShotConfig, ns)]),
    "02_few_shot_sweep.ipynb": Validator(lambda ns: sweep_configs(ns, ns.get("methods"), ns.get("lrs")),
                                         {"method": "methods", "lr": "lrs",
                                          **{name: plural for plural, name in tuned_lists().items()}}),
    "03_swa_ablation.ipynb": Validator(lambda ns: [from_namespace(FinetuneConfig, ns)]),
    "04_analysis.ipynb": Validator(_analysis),
    "05_model_soups.ipynb": Validator(_soups, {"lr": "lrs"}),
}


def declared_defaults(notebook) -> dict:
    """A notebook's declared parameters with their default values (those written as literals)."""
    out = {}
    for name, info in notebook_parameters(notebook).items():
        try:
            out[name] = ast.literal_eval(str(info["default"]))
        except (ValueError, SyntaxError):
            pass
    return out


def point_configs(point: Point) -> list | None:
    """The configs a point's notebook builds from its parameters, relative paths from its root (as
    in its kernel); None for a notebook `VALIDATORS` does not know. Raises ValueError / TypeError
    as validation reports them."""
    validator = VALIDATORS.get(point.notebook.name)
    if validator is None:
        return None
    with rooted_at(point.root):
        return validator.check({**declared_defaults(point.notebook), **point.parameters})


def check_values(validator: Validator, namespace: Mapping, defaults: Mapping) -> tuple[list[str], list, set]:
    """Every problem of one point's values, not only the first: the value an error names is put
    back to the notebook's default and the check runs again. Returns the errors, the configs built
    (from the repaired values when there were errors) and the keys that were put back."""
    ns, errors, reset = dict(namespace), [], set()
    for _ in range(len(ns) + 1):
        try:
            return errors, validator.check(ns), reset
        except (ValueError, TypeError) as err:
            errors.append(str(err))
            # the key the error starts with, else another it names ("swa_last_k=10 exceeds epochs=1":
            # the user set epochs, not swa_last_k)
            m = _KEY.match(str(err))
            named = ([m.group(1)] if m else []) + _NAMED.findall(str(err))
            keys = [validator.aliases.get(k, k) for k in named]
            key = next((k for k in keys if k in ns and k not in reset and k in defaults and ns[k] != defaults[k]), None)
            if key is None:
                return errors, [], reset  # a value the user did not set, or one we cannot put back
            ns[key] = defaults[key]
            reset.add(key)
    return errors, [], reset


def _resolve(root: Path, path: str) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else root / p


WEIGHTS, WRITTEN = ("pretrained", "vision_weights"), ("output_dir", "cache_dir")


def named_path_problems(values: Mapping, keys, root: Path, writable: Callable[[Path], str | None]) -> list[str]:
    """The weights files among `keys` of `values` that are not there, and the folders it writes
    into that are not writable."""
    problems = [problem for key in WEIGHTS if key in keys and (problem := missing_file(key, values.get(key), root))]
    for key in WRITTEN:
        value = values.get(key)
        if key in keys and isinstance(value, str) and value and (why := writable(_resolve(root, value))):
            problems.append(f"{key}={value!r} is not writable: {why}")
    return problems


def check_paths(cfg, root: Path, reset: set, writable: Callable[[Path], str | None]) -> list[str]:
    """The data a config reads, its weight files, and the folders it writes into. A value that was
    put back to its default after an error (`reset`) is not the user's and is not checked."""
    problems = []
    if not cfg.download and not {"root_dir", "download"} & reset:
        data = _resolve(root, cfg.root_dir)
        if "dataset" in reset:  # the dataset name was wrong: at least the folder must be there
            if not data.is_dir():
                problems.append(f"root_dir={cfg.root_dir!r}: no such folder ({data})")
        else:
            spec = dataset_spec(cfg.dataset)
            if not data_present(data, cfg.dataset):
                problems.append(f"root_dir={cfg.root_dir!r}: no WILDS dataset {spec.folder}/ (with {spec.release_marker}) "
                                f"in {data}; write a synthetic copy with `clipdg synth --root {cfg.root_dir}`, "
                                "point root_dir at the folder holding it, or set download: true")
    values = {key: getattr(cfg, key, None) for key in WEIGHTS + WRITTEN}
    return problems + named_path_problems(values, set(values) - reset, root, writable)


def missing_file(key: str, value, root: Path) -> str | None:
    """The problem of a weights parameter naming a file that is not there, or None."""
    from ..models.weights import folder_problem, names_a_file  # here: torch, which the runner's done checks do without

    if not names_a_file(value) or _resolve(root, value).is_file():
        return None
    if folder := folder_problem(_resolve(root, value), key):
        return folder
    cov = re.search(r"coverage-([0-9.]+)", str(value))
    make = f"clipdg pretrain-tiny --coverage {cov[1]}" if cov else "clipdg pretrain-tiny"
    return (f"{key}={value!r}: no such file ({_resolve(root, value)}); create it first "
            f"(the demo's weights: `{make}`) or fix the path")


def weights_problems(cfg, root: Path, memo: dict) -> list[str]:
    """Each weights file the config reads is readable and holds the architecture it asks for,
    from the file's header (`inputs.weights_file_problem`); `memo` holds the verdict per file
    (path, size, mtime) and architecture, so each distinct file is opened once per experiment."""
    from ..inputs import weight_files, weights_file_problem

    problems = []
    with rooted_at(root):
        for key, value in weight_files(cfg):
            path = _resolve(root, value)
            if not path.is_file():
                continue  # reported as missing
            arch = (cfg.model,) if key == "pretrained" or cfg.vision_arch == "clip-visual" else \
                (cfg.vision_arch, cfg.model, cfg.dataset)
            stat = path.stat()
            memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, key, arch)
            if memo_key not in memo:
                error = weights_file_problem(cfg, key, str(path))
                memo[memo_key] = None if error is None else str(error)
            if memo[memo_key]:
                problems.append(memo[memo_key])
    return problems


def point_problems(point: Point, writable: Callable[[Path], str | None], paths: bool, weights_memo: dict) -> list[str]:
    """Every problem of one point (no file names): values, then (``paths``) files and folders, and
    the weights files' contents."""
    problems = []
    if paths and (why := writable(point.output.parent)):
        problems.append(f"the executed notebooks' folder {point.output.parent} is not writable: {why}")
    validator = VALIDATORS.get(point.notebook.name)
    if validator is None:
        return problems
    defaults = declared_defaults(point.notebook)
    given = {**defaults, **point.parameters}
    with rooted_at(point.root):  # relative paths mean the experiment's root, as in its kernels
        errors, configs, reset = check_values(validator, given, defaults)
    problems += errors
    if paths:
        for cfg in configs:
            problems += check_paths(cfg, point.root, reset, writable)
        if errors:  # the configs that would read them were not built (or from defaults): the point's own values
            problems += named_path_problems(given, point.parameters, point.root, writable)
        for cfg in configs if not errors else []:  # the weights the point will read, as it will read them
            problems += weights_problems(cfg, point.root, weights_memo)
    return list(dict.fromkeys(problems))


def experiment_problems(experiment: Experiment, stages: list[Stage] | None = None, paths: bool = True) -> list[str]:
    """Every problem of every point, one line each: `<file>: stage S, point P: <key>=... <why>`.
    The same problem at many points is listed once, at its first point, with how many more (and
    in which other stages) have it."""
    writable = functools.cache(unwritable)  # each folder once
    weights_memo: dict = {}  # each distinct weights file is opened once
    where: dict[str, list[tuple[str, str]]] = {}
    for stage in stages if stages is not None else experiment.stages:
        for point in stage.points:
            for problem in point_problems(point, writable, paths, weights_memo):
                where.setdefault(problem, []).append((stage.name, point.name))
    lines = []
    for problem, at in where.items():
        (stage, name), others = at[0], [s for s, _ in at[1:] if s != at[0][0]]
        more = ""
        if len(at) > 1:
            also = f", also in stage(s) {', '.join(dict.fromkeys(others))}" if others else ""
            more = f" (and {len(at) - 1} more point(s){also})"
        lines.append(f"{experiment.path}: stage {stage}, point {name}{more}: {problem}")
    return lines


def _estimates(experiment: Experiment, stages, wanted: Callable, fields: tuple, estimate: Callable) -> list[tuple]:
    """(stage name, config, bytes) of every run of the (chosen) stages that `wanted` picks, finished
    or not; `estimate` runs once per distinct value of the config `fields` it reads. Points whose
    parameters do not validate are left out (validation reports them)."""
    memo, out = {}, []
    for stage in stages if stages is not None else experiment.stages:
        for point in stage.points:
            try:
                configs = point_configs(point) or []
            except (ValueError, TypeError):
                continue
            for cfg in filter(wanted, configs):
                key = tuple(getattr(cfg, f) for f in fields)
                if key not in memo:
                    memo[key] = estimate(cfg)
                out.append((stage.name, cfg, memo[key]))
    return out


def kept_weights_plan(experiment: Experiment, stages: list[Stage] | None = None) -> str | None:
    """One line: the disk the runs that keep their final weights (for model soups) take, per stage,
    finished ones too (the experiment's whole footprint); None when no run keeps weights."""
    from ..train import kept_weights_estimate

    kept = _estimates(experiment, stages, lambda cfg: getattr(cfg, "keep_weights", False),
                      ("method", "model", "text_mode", "vision_arch", "dataset"), kept_weights_estimate)
    if not kept:
        return None
    every = [b for _, _, b in kept]
    stages_text = ", ".join(f"stage {name}: {n}" for name, n in Counter(name for name, _, _ in kept).items())
    return (f"keep_weights: {len(every)} runs x {_span(every)} = {size_text(sum(every))} on disk "
            f"({stages_text}; final weights in float16, for model soups)")


def checkpoint_plan(experiment: Experiment, stages: list[Stage] | None = None, jobs: int = 1) -> str | None:
    """One line: what the runs that train end to end write in checkpoints, each at most
    ceil(epochs / checkpoint_every) of them, and the most on disk at once: a run's is deleted when it
    finishes and a point trains its runs in turn, so `jobs` points hold at most `jobs`. None when no
    run trains end to end."""
    from ..config import METHODS
    from ..train import checkpoint_estimate

    runs = [(-(-cfg.epochs // cfg.checkpoint_every), b) for _, cfg, b in _estimates(
        experiment, stages, lambda cfg: cfg.method in METHODS and METHODS[cfg.method].trains == "end_to_end",
        ("method", "model", "text_mode", "vision_arch", "dataset", "train_blocks", "swa", "ema_decay"),
        checkpoint_estimate)]  # (checkpoints, bytes) per run
    if not runs:
        return None
    counts, each = [n for n, _ in runs], [b for _, b in runs]
    count_text = str(counts[0]) if len(set(counts)) == 1 else f"{min(counts)} .. {max(counts)}"
    peak = min(jobs, len(runs)) * max(each)
    return (f"checkpoints: {len(runs)} runs x at most {count_text} x {_span(each)} = {size_text(sum(n * b for n, b in runs))} "
            f"written; at most {size_text(peak)} on disk at once ({jobs} job(s); a run's is deleted when it finishes)")


def _span(sizes: list[int]) -> str:
    return size_text(sizes[0]) if len({size_text(b) for b in sizes}) == 1 else f"{size_text(min(sizes))} .. {size_text(max(sizes))}"


def validate_experiment(experiment: Experiment, stages: list[Stage] | None = None, jobs: int = 1) -> None:
    """Raise one `ValidationError` listing every problem of the (chosen) stages; then print the disk
    the kept weights and checkpoints will take with `jobs` points at once, before anything runs."""
    problems = experiment_problems(experiment, stages)
    if problems:
        raise ValidationError(experiment.path, problems)
    for line in (kept_weights_plan(experiment, stages), checkpoint_plan(experiment, stages, jobs)):
        if line:
            print(line)
