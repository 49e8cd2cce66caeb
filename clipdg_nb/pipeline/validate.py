"""An experiment checked before anything runs: every point's config, the files it reads, the
folders it writes.

`clipdg run` (also `--dry-run`, `--slurm`) calls `validate_experiment` first. Each point's
parameters go through the code its notebook will run (`config.from_namespace`,
`config.sweep_configs`; the table `VALIDATORS`); every problem of every point is raised together,
naming the file, stage, point and key. A failing value is put back to its default so the rest is
still checked, and each distinct weights file's header is read once, so a wrong file stops here.
"""
from __future__ import annotations

import ast
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from ..config import FinetuneConfig, ZeroShotConfig, from_namespace, tuned_lists
from ..data import DATASETS, SPLITS, check_select_split, data_present, dataset_spec
from ..paths import rooted_at, unwritable
from .experiment import Experiment, ExperimentError, Point, Stage, notebook_parameters

_KEY = re.compile(r"\s*([A-Za-z_]\w*)")
_NAMED = re.compile(r"\b([A-Za-z_]\w*)=")


class ValidationError(ExperimentError):
    """One or more points of an experiment would fail; `problems` lists them all."""

    def __init__(self, path, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in {path}; nothing was run:\n  " + "\n  ".join(self.problems))


def _zero_shot(ns: Mapping) -> list:
    return [from_namespace(ZeroShotConfig, ns)]


def _sweep(ns: Mapping) -> list:
    from ..config import sweep_configs

    return sweep_configs(ns, ns.get("methods"), ns.get("lrs"))


def _finetune(ns: Mapping) -> list:
    return [from_namespace(FinetuneConfig, ns)]


def _soups(ns: Mapping) -> list:
    from ..soups import ingredient_configs

    return ingredient_configs(ns, ns.get("lrs"))


def _analysis(ns: Mapping) -> list:
    if ns.get("dataset") not in DATASETS:
        raise ValueError(f"dataset={ns.get('dataset')!r} is not valid; choose one of {list(DATASETS)}")
    check_select_split(ns["dataset"], ns.get("select_split"))  # where learning rates are chosen
    name = ns.get("experiment")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"experiment={name!r} must be letters, digits, '-' or '_' (it names a folder)")
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
    "01_zero_shot.ipynb": Validator(_zero_shot),
    "02_few_shot_sweep.ipynb": Validator(_sweep, {"method": "methods", "lr": "lrs",
                                                  **{name: plural for plural, name in tuned_lists().items()}}),
    "03_swa_ablation.ipynb": Validator(_finetune),
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
    for key in ("pretrained", "vision_weights"):
        value = getattr(cfg, key, None)
        if key not in reset and (problem := missing_file(key, value, root)):
            problems.append(problem)
    for key in ("output_dir", "cache_dir"):
        if key not in reset:
            why = writable(_resolve(root, getattr(cfg, key)))
            if why:
                problems.append(f"{key}={getattr(cfg, key)!r} is not writable: {why}")
    return problems


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


def raw_path_problems(namespace: Mapping, given: Mapping, root: Path, writable) -> list[str]:
    """The files and folders a point's own values name, checked from the values themselves: when
    other values fail, the configs that would read them cannot be built (or were built from
    defaults), yet a missing file or an unwritable folder is still the user's to fix now."""
    problems = []
    for key in ("pretrained", "vision_weights"):
        if key in given and (problem := missing_file(key, namespace.get(key), root)):
            problems.append(problem)
    for key in ("output_dir", "cache_dir"):
        value = namespace.get(key)
        if key in given and isinstance(value, str) and value and (why := writable(_resolve(root, value))):
            problems.append(f"{key}={value!r} is not writable: {why}")
    return problems


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


def point_problems(point: Point, writable: Callable[[Path], str | None] | None = None,
                   paths: bool = True, weights_memo: dict | None = None) -> list[str]:
    """Every problem of one point (no file names): values, then (``paths``) files and folders, and
    the weights files' contents."""
    writable = writable or unwritable
    weights_memo = {} if weights_memo is None else weights_memo
    problems = []
    if paths:
        why = writable(point.output.parent)
        if why:
            problems.append(f"the executed notebooks' folder {point.output.parent} is not writable: {why}")
    validator = VALIDATORS.get(point.notebook.name)
    if validator is None:
        return problems
    defaults = declared_defaults(point.notebook)
    with rooted_at(point.root):  # relative paths mean the experiment's root, as in its kernels
        errors, configs, reset = check_values(validator, {**defaults, **point.parameters}, defaults)
    problems += errors
    if paths:
        for cfg in configs:
            problems += [p for p in check_paths(cfg, point.root, reset, writable) if p not in problems]
        if errors:
            problems += [p for p in raw_path_problems({**defaults, **point.parameters}, point.parameters,
                                                      point.root, writable) if p not in problems]
        for cfg in configs if not errors else []:  # the weights the point will read, as it will read them
            problems += [p for p in weights_problems(cfg, point.root, weights_memo) if p not in problems]
    return problems


def experiment_problems(experiment: Experiment, stages: list[Stage] | None = None, paths: bool = True) -> list[str]:
    """Every problem of every point, one line each: `<file>: stage S, point P: <key>=... <why>`.
    The same problem at many points is listed once, at its first point, with how many more (and
    in which other stages) have it."""
    writable_cache: dict = {}
    weights_memo: dict = {}  # each distinct weights file is opened once

    def writable(folder: Path):
        key = str(folder.resolve())
        if key not in writable_cache:
            writable_cache[key] = unwritable(folder)
        return writable_cache[key]

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


def planned_configs(experiment: Experiment, stages: list[Stage] | None = None):
    """(stage name, config) of every run the (chosen) stages' points make, finished or not; points
    whose parameters do not validate are left out (validation reports them)."""
    for stage in stages if stages is not None else experiment.stages:
        for point in stage.points:
            try:
                yield from ((stage.name, cfg) for cfg in point_configs(point) or [])
            except (ValueError, TypeError):
                continue


def kept_weights_plan(experiment: Experiment, stages: list[Stage] | None = None) -> str | None:
    """One line saying the disk the runs that keep their final weights (keep_weights, for model
    soups) will take, per stage, estimated from each model built on the meta device
    (`train.kept_weights_estimate`); None when no run keeps weights. Runs already finished count too:
    the line is the experiment's whole footprint."""
    from ..train import kept_weights_estimate

    sizes: dict = {}
    per_stage: dict[str, list[int]] = {}
    for stage_name, cfg in planned_configs(experiment, stages):
        if getattr(cfg, "keep_weights", False):
            key = (cfg.method, cfg.model, cfg.text_mode, cfg.vision_arch, cfg.dataset)
            if key not in sizes:
                sizes[key] = kept_weights_estimate(cfg)
            per_stage.setdefault(stage_name, []).append(sizes[key])
    if not per_stage:
        return None
    every = [b for sizes_ in per_stage.values() for b in sizes_]
    stages_text = ", ".join(f"stage {name}: {len(b)}" for name, b in per_stage.items())
    return (f"keep_weights: {len(every)} runs x {_span(every)} = {_size(sum(every))} on disk "
            f"({stages_text}; final weights in float16, for model soups)")


def checkpoint_plan(experiment: Experiment, stages: list[Stage] | None = None, jobs: int = 1) -> str | None:
    """One line saying what the runs that train end to end write in resumable checkpoints: each run
    at most ceil(epochs / checkpoint_every) of them (checkpoint_minutes can only make fewer) of
    `train.checkpoint_estimate` bytes, and the most on disk at once: a run's checkpoint is deleted
    when it finishes (`runs.Run.finish`) and a point trains its runs one after another, so `jobs`
    points at once hold at most `jobs` checkpoints. None when no run trains end to end."""
    from ..config import METHODS
    from ..train import checkpoint_estimate

    sizes: dict = {}
    runs: list[tuple[int, int]] = []  # (checkpoints, bytes) per run
    for _, cfg in planned_configs(experiment, stages):
        if cfg.method in METHODS and METHODS[cfg.method].trains == "end_to_end":
            key = (cfg.method, cfg.model, cfg.text_mode, cfg.vision_arch, cfg.dataset, cfg.train_blocks,
                   cfg.swa, cfg.ema_decay)  # what the estimate reads
            if key not in sizes:
                sizes[key] = checkpoint_estimate(cfg)
            runs.append((-(-cfg.epochs // cfg.checkpoint_every), sizes[key]))
    if not runs:
        return None
    counts, each = [n for n, _ in runs], [b for _, b in runs]
    count_text = str(counts[0]) if len(set(counts)) == 1 else f"{min(counts)} .. {max(counts)}"
    peak = min(jobs, len(runs)) * max(each)
    return (f"checkpoints: {len(runs)} runs x at most {count_text} x {_span(each)} = {_size(sum(n * b for n, b in runs))} "
            f"written; at most {_size(peak)} on disk at once ({jobs} job(s); a run's is deleted when it finishes)")


def _span(sizes: list[int]) -> str:
    return _size(sizes[0]) if len({_size(b) for b in sizes}) == 1 else f"{_size(min(sizes))} .. {_size(max(sizes))}"


def _size(n: int) -> str:
    return f"{n / 1e12:.1f} TB" if n >= 1e12 else f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def validate_experiment(experiment: Experiment, stages: list[Stage] | None = None, paths: bool = True,
                        say: Callable[[str], None] | None = print, jobs: int = 1) -> None:
    """Raise one `ValidationError` listing every problem of the experiment's (chosen) stages; then
    `say` the disk the kept weights and checkpoints will take (`kept_weights_plan`, `checkpoint_plan`
    with `jobs` points at once), before anything runs."""
    problems = experiment_problems(experiment, stages, paths)
    if problems:
        raise ValidationError(experiment.path, problems)
    for line in (kept_weights_plan(experiment, stages), checkpoint_plan(experiment, stages, jobs)):
        if say is not None and line:
            say(line)
