"""The soup stage: uniform and greedy model soups (Wortsman et al. 2022, `averaging.soup_variants`)
of finished runs of one (dataset, method, fraction) that kept their weights, chosen on the selection
split only. `make_soups` writes one run folder under `soups_dir` (headline: the greedy soup), identified
by its rule and its ingredients by content (run ids and kept weights' sha256, checked before reading)."""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from .averaging import SOUP_VARIANTS, soup_variants
from .config import METHODS
from .runs import Run, load_records
from .paths import experiment_dir, to_jsonable

# What must agree between ingredients: the same data subset rule and the same architecture and
# starting point, so that their weights can be averaged (learning rate, seed, epochs... may differ).
SHARED_FIELDS = ("dataset", "method", "fraction", "model", "pretrained", "templates", "text_mode", "train_blocks",
                 "vision_arch", "vision_weights", "select_split", "select_metric", "eval_splits", "stratify")


def ingredient_configs(namespace: Mapping[str, Any], lrs) -> list:
    """The runs one point of the soup stage (05_model_soups) trains or reads back: its FinetuneConfig at
    each of 2+ distinct learning rates in `lrs`, keeping its final weights."""
    from .config import FinetuneConfig, from_namespace
    from .notebook_kernel import check_injected

    check_injected(namespace)
    if isinstance(lrs, (str, int, float)) or len(dict.fromkeys(lrs)) < 2:
        raise ValueError(f"lrs={lrs!r} must list at least 2 distinct learning rates: a soup averages the "
                         "runs of one seed over them, e.g. [1.0e-3, 3.0e-4, 1.0e-4]")
    configs = [from_namespace(FinetuneConfig, namespace, lr=lr, keep_weights=True) for lr in dict.fromkeys(lrs)]
    _check_trains_weights(configs[0].method)
    return configs


def _check_trains_weights(method: str) -> None:
    if not METHODS[method].end_to_end:
        trained = [name for name, spec in METHODS.items() if spec.end_to_end]
        raise ValueError(f"method={method!r} trains no weights to average; soups are for {trained}")


def check_kept_weights(configs, force: bool = False) -> None:
    """Before any training: each finished run `run(cfg)` would read back holds its kept weights (keep_weights
    is no part of identity: 02's run in the same folder kept none); raises, naming the run and what to do."""
    for cfg in configs if not force else ():
        if (run := Run.of(cfg)).is_done():
            run.kept_weights_digest()


def _common(records: list[dict], key: str):
    values = {json.dumps(to_jsonable(r["params"].get(key))) for r in records}
    return records[0]["params"].get(key) if len(values) == 1 else None


def check_ingredients(records: list[Mapping]) -> None:
    """Raise, naming the field and the runs, unless the runs can go into one soup."""
    if len(records) < 2:
        raise ValueError(f"a soup needs at least 2 finished runs, got {len(records)}")
    ids = [r["run_id"] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the same run is given twice: {ids}")
    for key in SHARED_FIELDS:
        values = {r["run_id"]: r["identity"].get(key) for r in records}  # only what the method reads
        if len({json.dumps(to_jsonable(v)) for v in values.values()}) > 1:
            raise ValueError(f"runs differ in {key!r} ({values}); a soup averages runs of one (dataset, method, "
                             f"fraction) with one architecture, start and selection rule")
    _check_trains_weights(records[0]["method"])


def soup_identity(records: list[Mapping]) -> dict[str, Any]:
    """What a soup is made of: its ingredients' run ids and kept weights' sha256, and its rule."""
    first = records[0]["params"]
    return {"kind": "soup", "dataset": first["dataset"], "method": first["method"], "fraction": first["fraction"],
            "select_split": first["select_split"], "select_metric": first.get("select_metric"),
            "rule": list(SOUP_VARIANTS), "ingredients": {r["run_id"]: r["kept_weights"]["sha256"] for r in records}}


def soups_dir(output_dir, experiment: str) -> Path:
    """`<output_dir>/<experiment>/soups/`: apart from the runs, never in their lr selection or seed intervals."""
    return experiment_dir(output_dir, experiment) / "soups"


def load_soups(output_dir, experiment: str) -> list[dict]:
    """The experiment's soups whose every ingredient is still one of its runs with the weights averaged;
    soups of runs since remade, superseded or gone are skipped with a warning."""
    soups = load_records(folder := soups_dir(output_dir, experiment))
    kept = {r["run_id"]: (r.get("kept_weights") or {}).get("sha256") for r in load_records(folder.parent)}
    # a soup without ingredient digests (made before they were recorded) cannot be checked: not current
    if stale := [s["run_id"] for s in soups if not (made_of := s["identity"].get("ingredients"))
                 or any(kept.get(k) != v for k, v in made_of.items())]:
        warnings.warn(f"skipping {len(stale)} soups of runs that are no longer the experiment's (remade, superseded or "
                      f"gone): {stale}; rerun the soup stage for the soups of its current runs", stacklevel=2)
    return [s for s in soups if s["run_id"] not in stale]


def soup_run(records: list[Mapping]) -> Run:
    identity, first = soup_identity(records), records[0]["params"]
    seed = _common(records, "seed")
    digest = hashlib.sha256(json.dumps(to_jsonable(identity), sort_keys=True).encode()).hexdigest()[:8]
    name = f"{first['dataset']}-{first['method']}-f{first['fraction']:g}-soup-s{'all' if seed is None else seed}-{digest}"
    return Run(soups_dir(first["output_dir"], records[0]["experiment"]) / name)


def make_soups(run_dirs, *, device: str | None = None, force: bool = False) -> dict:
    """Uniform and greedy soups of the finished runs in `run_dirs`; returns the record. A finished soup
    of the same ingredients (by content) is returned as it is unless `force`."""
    from filelock import FileLock

    runs = [Run(d) for d in run_dirs]
    if None in (records := [run.record() for run in runs]):
        raise FileNotFoundError(f"{runs[records.index(None)].path} holds no finished run (no result.json); "
                                "finish it first")
    if stale := [run.id for run in runs if run.superseded()]:
        raise ValueError(f"runs {stale} were superseded by a newer run of their point; make soups of the point's "
                         "current runs (rerun its soup stage)")
    check_ingredients(records)
    for run in runs:
        run.kept_weights_digest()  # raises, naming the run and how to remake its weights
    target, identity = soup_run(records), soup_identity(records)
    target.path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.lock_path)):  # a second process waits, then reads the finished soups
        if not force and target.is_done(identity):
            return target.record()
        return _make(target, identity, runs, records, device)


def _make(target: Run, identity: dict, runs: list[Run], records: list[dict], device: str | None) -> dict:
    from .config import config_of, from_params
    from .data import load_dataset
    from .devices import resolve_device
    from .evaluate import evaluate_logits
    from .images import Normalize
    from .methods import Context, initial_model, selection_metric

    started = time.perf_counter()
    params = dict(records[0]["params"], **({"device": device} if device else {}))
    cfg = from_params(config_of(params["method"]), params)
    ctx = Context(cfg, load_dataset(cfg.dataset, cfg.root_dir), resolve_device(cfg.device), target)
    model, (mean, std, size) = initial_model(ctx, fit_probe=False)
    model.to(ctx.device)
    predict, metric = ctx.predictor(Normalize(mean, std), size), selection_metric(cfg)

    def logits_of(state, split):
        model.load_state_dict(state)
        return predict(model, split)

    def score_on(state, split):  # soup_variants calls it with the selection split only
        metrics, _ = evaluate_logits(ctx.dataset, ctx.indices(split), logits_of(state, split), split)
        return metrics[metric]

    # each ingredient's own score, with the same scorer and the same (float16-kept) weights as the soups
    candidates = [(r["run_id"], run.kept_weights, score_on(run.kept_weights(), cfg.select_split))
                  for r, run in zip(records, runs)]
    soups = soup_variants(candidates, score_on, cfg.select_split)
    headline = "greedy_soup"
    variants, calibration = ctx.scored({v: {s: logits_of(soups[v].state, s) for s in cfg.eval_splits}
                                        for v in SOUP_VARIANTS}, headline)
    seed, lr = _common(records, "seed"), _common(records, "lr")
    record = {
        "run_id": target.id, "experiment": target.path.parent.parent.name, "kind": "soup",
        "dataset": cfg.dataset, "method": cfg.method, "fraction": cfg.fraction, "seed": seed, "lr": lr,
        "root_dir": str(cfg.root_dir),
        # what the ingredients share (their own parameters are in their records), and where this lives
        "params": {**{k: v for k, v in cfg.params().items() if k in SHARED_FIELDS + ("root_dir", "seed", "lr")},
                   "seed": seed, "lr": lr,
                   "output_dir": str(target.path.parent.parent.parent), "experiment": target.path.parent.parent.name},
        "identity": identity, "metrics": variants[headline],
        "selection": {"split": cfg.select_split, "metric": metric, "variant": headline,
                      "ingredient_scores": {name: score for name, _, score in candidates}},
        "variants": variants,
        "soups": {v: {"ingredients": soups[v].ingredients, "score": soups[v].score, "trace": soups[v].trace or None}
                  for v in SOUP_VARIANTS},
        "calibration": calibration,
        "timings": {"total_s": time.perf_counter() - started}}
    target.partial.mkdir(parents=True, exist_ok=True)  # save_predictions=False writes nothing before this
    return target.finish(record)
