"""The run folder, `<output_dir>/<experiment>/<run_id>/`, as one object: its id, its record
(`result.json`, the only "done" marker), predictions per split and weight variant, and the one
atomic writer every file of the package goes through.

    result.json                      every parameter, the identity, metrics per split (WILDS's
                                     names), selection and its split, timings, versions, git commit
    predictions/<split>.parquet      idx (in the full WILDS dataset), y_true, y_pred, p_top1, ...
    variants/<v>/predictions/...     other weights of the same training run (last, swa, ema, ...)

A run is built in `<run_id>.partial/` (its resumable checkpoint included) and renamed into place
only when complete, so a finished run is replaced only by a successful new one, and a forced rerun
leaves exactly the files its record lists.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .paths import resolve

RESULT_FILE = "result.json"
PREDICTION_COLUMNS = ("idx", "y_true", "y_pred", "p_top1")
_VERSION_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "open-clip-torch": "open_clip",
                     "wilds": "wilds", "clipdg-nb": "clipdg_nb", "numpy": "numpy", "pandas": "pandas"}


# ---------------------------------------------------------------------------------------------
# Atomic writes: a unique temporary name beside the target, fsync, rename
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a unique temporary path beside `target` (`.<name>.<random><suffix>`); on success it is
    renamed onto `target`, on any error removed. Readers never see half a file; two writers never
    share a temporary name. `suffix` is for writers that insist on an extension (papermill: .ipynb)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are meant to be read
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class FolderNotWritableError(PermissionError):
    """A folder results or caches must go to cannot be written; the message names the setting."""


def check_writable(folder: str | os.PathLike, what: str) -> Path:
    """Create `folder` and a temporary file in it (removed again), or raise FolderNotWritableError
    naming `what` (the setting, e.g. 'output_dir') and the path: before hours of computation, not after."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        raise FolderNotWritableError(
            f"{what}: cannot write to {folder} ({type(e).__name__}: {e.strerror or e}). Choose a writable "
            f"{what}, or fix the folder's permissions; nothing was computed.") from e
    return folder


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(data)
    return Path(target)


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    return write_bytes(target, json.dumps(to_jsonable(obj), indent=2, allow_nan=False).encode() + b"\n")


def read_json(path: str | os.PathLike):
    """Parsed JSON, or None when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def to_jsonable(obj: Any) -> Any:
    """numpy / torch scalars and arrays, paths and tuples as plain JSON; non-finite floats as None."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return to_jsonable((obj.detach().cpu() if hasattr(obj, "detach") else obj).tolist())
    raise TypeError(f"{type(obj).__name__} cannot be stored in JSON: {obj!r}")


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


def experiment_dir(output_dir: str | os.PathLike, experiment: str) -> Path:
    """`<output_dir>/<experiment>`, the one rule for where an experiment's runs live (a relative
    output_dir from the repository root, wherever the kernel started)."""
    return resolve(output_dir) / experiment


class Run:
    """One run folder. `Run.of(cfg)` for a config, `Run.of_record(record)` for a record read back."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def of(cls, cfg) -> "Run":
        return cls(experiment_dir(cfg.output_dir, cfg.experiment) / run_id(cfg.identity()))

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
        record = self.record()
        return record is not None and (identity is None or record.get("identity") == to_jsonable(identity))

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
        record = {**record, "versions": collect_versions(), "git_commit": git_commit(), "created_at": utc_now()}
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


def load_records(folder: str | os.PathLike) -> list[dict]:
    """Every finished run record directly under `folder` (unreadable ones skipped with a warning)."""
    records = []
    for path in sorted(Path(folder).glob(f"*/{RESULT_FILE}")):
        record = read_json(path)
        if not isinstance(record, dict) or "metrics" not in record:
            warnings.warn(f"skipping {path}: not a readable run record", stacklevel=2)
            continue
        records.append(record)
    return records


TIDY_COLUMNS = ("run_id", "experiment", "dataset", "method", "fraction", "seed", "lr", "tuned",
                "variant", "headline", "split", "metric", "value")


def tidy(records: list[Mapping]) -> pd.DataFrame:
    """Run records as one tidy frame: a row per (run, weight variant, split, metric). `headline`
    marks the variant reported in `metrics` (filter on it for one number per run)."""
    rows = []
    for record in records:
        headline = record["selection"].get("variant")
        base = {k: record.get(k) for k in ("run_id", "experiment", "dataset", "method", "fraction", "seed")}
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


MANIFEST_ENV = "CLIPDG_SWEEP_MANIFEST"  # where a notebook run by `clipdg run` lists its run folders


def note_runs(*runs) -> list[str]:
    """Tell the sweep runner which run folders this notebook produced (records or folders). Under
    `clipdg run` they are appended to the manifest named by $CLIPDG_SWEEP_MANIFEST; elsewhere this
    only returns them."""
    dirs = [str(Run.of_record(r).path if isinstance(r, Mapping) else r) for r in runs]
    manifest = os.environ.get(MANIFEST_ENV)
    if manifest:
        with open(manifest, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(d) + "\n" for d in dirs)
    return dirs
