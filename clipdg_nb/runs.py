"""The run folder, `<output_dir>/<experiment>/<run_id>/`, as one object: its id, its record
(`result.json`, the only "done" marker), predictions per split and weight variant, and the tidy
frame of many runs for the analysis (with the settings that tell runs of one method apart).

    result.json                      every parameter, the identity, metrics per split (WILDS's
                                     names), selection and its split, timings, versions, git commit
    predictions/<split>.parquet      idx (in the full WILDS dataset), y_true, y_pred, p_top1, ...
    variants/<v>/predictions/...     other weights of the same training run (last, swa, ema, ...)
    superseded.json                  only when a newer run of its point replaced it (by whom, when, why):
                                     kept on disk, read by no table, figure, soup, download or report

A run is built in `<run_id>.partial/` (its resumable checkpoint included) and renamed into place
only when complete, so a finished run is replaced only by a successful new one, and a forced rerun
leaves exactly the files its record lists.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .fingerprint import file_digest, sha256_of_file
from .inputs import run_identity
from .paths import MANIFEST_ENV, atomic_path, experiment_dir, read_json, to_jsonable, write_json

RESULT_FILE = "result.json"
SUPERSEDED_FILE = "superseded.json"  # in a run folder that a newer run of its point replaced
WEIGHTS_FILE = "weights/last.safetensors"  # the final weights, kept where an experiment makes soups
PREDICTION_COLUMNS = ("idx", "y_true", "y_pred", "p_top1")
_VERSION_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "open-clip-torch": "open_clip",
                     "wilds": "wilds", "clipdg-nb": "clipdg_nb", "numpy": "numpy", "pandas": "pandas"}


# ---------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------

def collect_versions() -> dict[str, str | None]:
    """Python and key library versions, from package metadata (imports nothing heavy)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for dist, key in _VERSION_PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """HEAD of the checkout holding `path` (default: this package); None on any failure."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        proc = subprocess.run(["git", "-C", str(where), "rev-parse", "--verify", "--quiet", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def hardware() -> dict[str, Any]:
    """Where the run computed: the CPU (model, core count) and the GPU it used, if any. CUDA is
    asked only when this process already initialised it (a run that used a GPU), so a CPU run
    neither imports torch here nor wakes a GPU it never touched."""
    import platform

    torch = sys.modules.get("torch")
    gpu = None
    with contextlib.suppress(Exception):
        if torch is not None and torch.cuda.is_initialized():
            gpu = torch.cuda.get_device_name(torch.cuda.current_device())
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # Linux names the model only in /proc/cpuinfo
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Identity and the run folder
# ---------------------------------------------------------------------------------------------

def run_id(identity: Mapping[str, Any]) -> str:
    """Readable and unique for the parameters that change the numbers: dataset, method, fraction,
    lr and seed spelled out, the rest of the identity as a short hash."""
    parts = [identity["dataset"], identity["method"]]
    if "fraction" not in identity:  # zero-shot: nothing trained, no subset
        parts.append(identity["templates"])
    else:
        parts.append(f"f{identity['fraction']:g}")
        if identity.get("lr") is not None:
            parts.append(f"lr{identity['lr']:g}")
    parts.append(f"s{identity['seed']}")
    digest = hashlib.sha256(json.dumps(to_jsonable(identity), sort_keys=True).encode()).hexdigest()[:8]
    return "-".join(parts) + "-" + digest


class Run:
    """One run folder. `Run.of(cfg)` for a config, `Run.of_record(record)` for a record read back."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.identity: dict | None = None  # set by `of`: what a finished run must hold to be reused
        self.inputs: dict | None = None  # set by `of`: what the run reads, by content

    @classmethod
    def of(cls, cfg) -> "Run":
        """The run of a config. Its id and its reuse check hold the science and the content the run
        reads (`inputs.run_identity`: data fingerprint, weights digests), never a path's text."""
        identity, inputs = run_identity(cfg)
        run = cls(experiment_dir(cfg.output_dir, cfg.experiment) / run_id(identity))
        run.identity, run.inputs = identity, inputs
        return run

    @classmethod
    def of_record(cls, record: Mapping, output_dir: str | os.PathLike | None = None) -> "Run":
        params = record.get("params") or {}
        root = output_dir if output_dir is not None else params.get("output_dir", "outputs/runs")
        return cls(experiment_dir(root, record["experiment"]) / record["run_id"])

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def partial(self) -> Path:
        """Where the run is built (checkpoint included) before it is renamed into place."""
        return self.path.with_name(self.path.name + ".partial")

    @property
    def checkpoint_dir(self) -> Path:
        return self.partial / "checkpoint"

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def record(self) -> dict | None:
        """The finished record, or None (missing or unreadable: not done)."""
        record = read_json(self.path / RESULT_FILE)
        return record if isinstance(record, dict) else None

    def is_done(self, identity: Mapping | None = None) -> bool:
        """A finished record is there, with this identity (default: the one `of` computed; a Run
        made from a bare path and no identity asks only for the record)."""
        identity = self.identity if identity is None else identity
        record = self.record()
        return record is not None and (identity is None or record.get("identity") == to_jsonable(identity))

    def mark_superseded(self, by, reason: str) -> None:
        """Keep the run on disk but out of every table, figure, soup, download and report: `by` (the
        run ids, or the point, that replaced it) and why. Noting the run again (`note_runs`) lifts it."""
        write_json(self.path / SUPERSEDED_FILE, {"by": [by] if isinstance(by, str) else list(by),
                                                  "at": utc_now(), "reason": reason})

    def superseded(self) -> dict | None:
        """What `mark_superseded` wrote, or None for a current run."""
        found = read_json(self.path / SUPERSEDED_FILE)
        return found if isinstance(found, dict) else None

    def prediction_path(self, split: str, variant: str | None = None, base: Path | None = None) -> Path:
        base = base if base is not None else self.path
        folder = base if variant is None else base / "variants" / variant
        return folder / "predictions" / f"{split}.parquet"

    def predictions(self, split: str | None = None, variant: str | None = None) -> pd.DataFrame:
        """Predictions of one split (all evaluated splits when None), for the headline weights or
        for another variant ('last', 'swa', 'ema', 'wise_ft_0.5', ...)."""
        record = self.record()
        if record is None:
            raise FileNotFoundError(f"{self.path} holds no finished run ({RESULT_FILE} is missing)")
        if variant == record["selection"].get("variant"):
            variant = None
        if variant is not None and variant not in (record.get("variants") or {}):
            raise ValueError(f"run {record['run_id']} has no variant {variant!r}; it has "
                             f"{sorted(record.get('variants') or {})}")
        frames = []
        for s in [split] if split is not None else list(record["metrics"]):
            path = self.prediction_path(s, variant)
            if not path.is_file():
                raise FileNotFoundError(f"no predictions at {path}; was the run made with save_predictions=True?")
            frame = pd.read_parquet(path)
            frames.append(frame if "split" in frame.columns else frame.assign(split=s))
        return pd.concat(frames, ignore_index=True)

    def keep_weights(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The final weights into the run being built (`partial`), float entries as float16 (an entry
        that float16 cannot hold, |x| > 65504, stays float32), for soups across runs; returns what the
        record says of them (`kept_weights`: bytes and sha256, checked by `kept_weights_digest`)."""
        import torch
        from safetensors.torch import save_file

        tensors = {}
        for key, value in state.items():
            value = value.detach().cpu()
            if torch.is_floating_point(value):
                half = value.to(torch.float16)
                value = half if torch.isfinite(half).all() or not torch.isfinite(value).all() else value.float()
            tensors[key] = value.contiguous().clone()  # tied weights must serialise independently
        with atomic_path(self.partial / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp))
            return {"file": WEIGHTS_FILE, "variant": "last", "dtype": "float16", "sha256": sha256_of_file(tmp),
                    "bytes": tmp.stat().st_size}

    def kept_weights_digest(self) -> str:
        """The sha256 of the run's kept weights, checked against its record's (memoised by the file's stat
        under the run's cache_dir, `fingerprint.file_digest`); raises, naming the run and the remedy."""
        path, record = self.path / WEIGHTS_FILE, self.record() or {}
        expected, remake = (record.get("kept_weights") or {}).get("sha256"), (
            "train it again keeping them (keep_weights=True and force=True: papermill -p force True, clipdg run "
            "--force), or give the soups an output_dir of their own (05_model_soups' default: outputs/runs/soups)")
        if not path.is_file():
            raise FileNotFoundError(f"run {self.id} kept no weights ({path} is missing): {remake}")
        if (digest := file_digest(path, (record.get("params") or {}).get("cache_dir"))) != expected:
            why = "damaged or replaced since the run" if expected else "its record holds no digest of them"
            raise ValueError(f"run {self.id}: the kept weights {path} are not the run's ({why}): {remake}")
        return digest

    def kept_weights(self) -> dict[str, Any]:
        """The run's kept weights, checked (`kept_weights_digest`), float entries as float32 (to average)."""
        import torch
        from safetensors.torch import load_file

        self.kept_weights_digest()
        state = load_file(str(self.path / WEIGHTS_FILE))
        return {k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()}

    def write_predictions(self, split: str, frame: pd.DataFrame, variant: str | None = None) -> Path:
        """Into the run being built (`partial`); they move into place with the record."""
        with atomic_path(self.prediction_path(split, variant, base=self.partial)) as tmp:
            frame.to_parquet(tmp, index=False)
        return self.prediction_path(split, variant)

    def _prune(self, record: Mapping) -> None:
        """Drop files an interrupted earlier attempt left in the run being built: the finished run
        holds exactly the splits and variants its record lists."""
        headline = record["selection"].get("variant")
        keep = {(None, s) for s in record["metrics"]} | {
            (v, s) for v, table in (record.get("variants") or {}).items() if v != headline for s in table}
        for path in list(self.partial.glob("predictions/*.parquet")) + list(self.partial.glob("variants/*/predictions/*.parquet")):
            variant = None if path.parent.parent == self.partial else path.parent.parent.name
            if (variant, path.stem) not in keep:
                path.unlink()
        for folder in [*self.partial.glob("variants/*"), self.partial / "variants"]:
            if folder.is_dir() and not any(folder.rglob("*.parquet")):
                shutil.rmtree(folder)

    def finish(self, record: Mapping) -> dict:
        """Write the record into the run being built, drop its checkpoint, and rename it into place,
        replacing any earlier run of this id only now that the new one is complete."""
        record = {**record, "versions": collect_versions(), "git_commit": git_commit(), "hardware": hardware(),
                  "created_at": utc_now()}
        self._prune(record)
        write_json(self.partial / RESULT_FILE, record)
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        old = None
        if self.path.exists():
            old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
        os.replace(self.partial, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.record()


def load_records(folder: str | os.PathLike, include_superseded: bool = False) -> list[dict]:
    """Every finished run record directly under `folder` (unreadable ones skipped with a warning),
    less the superseded ones (`Run.mark_superseded`; counted in one line of this module's log)."""
    records, superseded = [], 0
    for path in sorted(Path(folder).glob(f"*/{RESULT_FILE}")):
        if not include_superseded and (path.parent / SUPERSEDED_FILE).exists():
            superseded += 1
            continue
        record = read_json(path)
        if not isinstance(record, dict) or "metrics" not in record:
            warnings.warn(f"skipping {path}: not a readable run record", stacklevel=2)
            continue
        records.append(record)
    if superseded:
        logging.getLogger(__name__).info("%d superseded run(s) under %s left out", superseded, folder)
    return records


# What the tidy frame's own columns already say; every other setting of a run's identity (and the
# content it read, `inputs`) that differs between runs of one (dataset, method) goes into `setting`.
# A soup's ingredients (run ids) differ by seed as a run's seed does: not a setting.
_SETTING_SKIPS = ("dataset", "method", "fraction", "seed", "lr", "ingredients")


def _setting_value(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else hashlib.sha256(text.encode()).hexdigest()[:8]


def setting_labels(records: list[Mapping]) -> list[str]:
    """Per record, the settings in which it differs from other runs of its (dataset, method), as
    'key=value, ...' ('' when they all agree): runs that differ in anything but the seed, the
    fraction and the learning rate (selected on validation) are different science and must never
    be averaged together (`analysis` groups by this label)."""
    idents = []
    for r in records:
        tuned = r.get("tuned") or {}  # chosen on validation like the lr (MethodSpec.tuned): a column of its own
        ident = {k: v for k, v in (r.get("identity") or {}).items() if k not in _SETTING_SKIPS and k not in tuned}
        if r.get("inputs") is not None:  # the data and weights it read, by content
            ident["inputs"] = r["inputs"]
        idents.append(ident)
    groups: dict = {}
    for i, r in enumerate(records):
        # soups (kind 'soup') apart from runs: their identities hold other keys, not other settings
        groups.setdefault((r.get("dataset"), r.get("method"), r.get("kind")), []).append(i)
    labels = [""] * len(records)
    for members in groups.values():
        keys = sorted({k for i in members for k in idents[i]})
        differing = [k for k in keys if len({_setting_value(idents[i].get(k)) for i in members}) > 1]
        for i in members:
            labels[i] = ", ".join(f"{k}={_setting_value(idents[i].get(k))}" for k in differing)
    return labels


TIDY_COLUMNS = ("run_id", "experiment", "dataset", "method", "setting", "fraction", "seed", "lr", "tuned",
                "variant", "headline", "split", "metric", "value")


def is_run_record(record) -> bool:
    """Whether a parsed result.json is a run's record (a notebook may note folders holding other JSON)."""
    return isinstance(record, Mapping) and "metrics" in record and "selection" in record


def tidy(records: list[Mapping]) -> pd.DataFrame:
    """Run records as one tidy frame: a row per (run, weight variant, split, metric). `headline`
    marks the variant reported in `metrics` (filter on it for one number per run)."""
    rows = []
    for record, setting in zip(records, setting_labels(records)):
        headline = record["selection"].get("variant")
        base = {k: record.get(k) for k in ("run_id", "experiment", "dataset", "method", "fraction", "seed")}
        base["setting"] = setting
        base["lr"] = record.get("lr")
        # the other settings chosen on validation like lr (e.g. 'l2sp_alpha=0.1'); '' for none
        base["tuned"] = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in sorted((record.get("tuned") or {}).items()))
        for variant, table in (record.get("variants") or {headline: record["metrics"]}).items():
            for split, metrics in table.items():
                for metric, value in metrics.items():
                    rows.append({**base, "variant": variant, "headline": variant == headline, "split": split,
                                 "metric": metric, "value": np.nan if value is None else float(value)})
    return pd.DataFrame(rows, columns=list(TIDY_COLUMNS)).astype({"value": float})


def split_settings(df: pd.DataFrame) -> pd.DataFrame:
    """Runs of one method that differ in a setting (`runs.setting_labels`: e.g. train_blocks, or
    the data they read) become methods of their own, 'finetune [train_blocks=6]', so no table,
    finding or figure averages different science together. Frames with one setting per method
    come back unchanged."""
    if "setting" not in df.columns or not (df["setting"].fillna("") != "").any():
        return df
    labelled = df["setting"].fillna("") != ""
    return df.assign(method=df["method"].where(~labelled, df["method"] + " [" + df["setting"].fillna("") + "]"))


def merge_settings(df: pd.DataFrame) -> pd.DataFrame:
    """Undo `split_settings` where another column explains the settings (e.g. `coverage`), for
    functions that group by that column themselves."""
    suffix = " [" + df["setting"].fillna("") + "]"
    labelled = (df["setting"].fillna("") != "") & pd.Series([m.endswith(x) for m, x in zip(df["method"], suffix)], index=df.index)
    return df.assign(method=[m[: -len(x)] if lab else m for m, x, lab in zip(df["method"], suffix, labelled)])


def check_one_setting(df: pd.DataFrame, what: str) -> None:
    """Refuse to pool runs of one (dataset, method) that differ in a setting, naming them."""
    if "setting" not in df.columns or df.empty:
        return
    counts = df.groupby(["dataset", "method"])["setting"].nunique(dropna=False)
    mixed = counts[counts > 1]
    if len(mixed):
        (dataset, method), _ = next(iter(mixed.items()))
        settings = sorted(set(df.loc[(df["dataset"] == dataset) & (df["method"] == method), "setting"].fillna("")))
        raise ValueError(f"{what}: runs of {method} on {dataset} differ in their settings ({'; '.join(settings)}), "
                         "so their numbers would be pooled into one; pass runs.split_settings(df) to show them "
                         "apart, or keep the runs of one setting (df[df['setting'] == ...])")


def note_runs(*runs) -> list[str]:
    """Tell the sweep runner which run folders this notebook produced (records or folders). Under
    `clipdg run` they are appended to the manifest named by $CLIPDG_SWEEP_MANIFEST; elsewhere this
    only returns them."""
    dirs = [str(Run.of_record(r).path if isinstance(r, Mapping) else r) for r in runs]
    for d in dirs:  # a run this notebook made or reused now is current again
        Path(d, SUPERSEDED_FILE).unlink(missing_ok=True)
    manifest = os.environ.get(MANIFEST_ENV)
    if manifest:
        with open(manifest, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(d) + "\n" for d in dirs)
    return dirs


def say_reused(*records, force_hint: str = "force=True in the parameters (papermill -p force True; "
               "clipdg run --force)") -> list[str]:
    """Print one line per run that `methods.run` read back instead of training (it marks them
    `reused`): which run, where, when it was made, and how to train it again. Returns the lines."""
    lines = []
    for record in records:
        if not (isinstance(record, Mapping) and record.get("reused")):
            continue
        made = str(record.get("created_at") or "")[:19].replace("T", " ")
        lines.append(f"REUSED: {record['run_id']} finished earlier" + (f" ({made} UTC)" if made else "")
                     + " with the same parameters, so nothing was trained or evaluated now; its record is read back "
                     f"from {Run.of_record(record).path}. To compute it again: {force_hint}")
    if lines and len(lines) < len(records):
        lines.append(f"{len(lines)} of {len(records)} runs reused; the others were computed now")
    if lines:
        print("\n".join(lines))
    return lines

