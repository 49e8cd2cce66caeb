"""clipdg-nb: few-shot CLIP fine-tuning under WILDS distribution shift (FMoW, iWildCam, Camelyon17).

A map of the package, in the order data flows (`parameters/*.yaml -> pipeline -> notebook -> here`).
Two layers, one direction: the library the notebooks import, and the runner (pipeline/, cli), which
imports the library and never the other way round (tests/test_layers.py).

    the study's core
      config      what a run is: one dataclass per notebook family, and METHODS, one spec per method
      methods     run(cfg): data -> model -> train / average -> evaluate -> the run folder
      losses      cross-entropy, FLYP, L2-SP: every loss and per-step hook by name
      train       fit(): one loop (resume, train an epoch, end the epoch) and its resumable checkpoint
      averaging   SWA, EMA, WiSE-FT and soups as small pure functions; AVERAGES, the variants fit makes
      soups       uniform and greedy soups across finished runs, chosen on ID validation
      evaluate    predictions, WILDS's metrics, calibration, failure cases
      runs        the run folder as one object: identity, record, predictions, kept weights, the tidy frame
      inputs      what a run reads (data, weights): there, readable, fitting, and its content identity
      fingerprint content digests: dataset folders, weights files, the warning a rebuilt cache gives
      paths       the repository root, the experiment folder, writable folders, the one atomic writer
      devices     device, precision and the torchrun primitives
    data/         one module per dataset (fmow, iwildcam, camelyon17) + the registry, splits, samplers
    images/       the decode cache, tensors, batched augmentation;   models/  open_clip, heads, probes
    analysis/     experiment-level analysis, tables, figures, failure browser, coverage
    demo/         synthetic WILDS-format data and the tiny pretraining the offline demo runs on
    notebook_kernel.py  inside a notebook's kernel: papermill's injected parameters checked, training progress
    the runner
      pipeline/   experiment files, validation, the papermill runner, the demo, reports, README numbers, Slurm
      cli         the one command line

The names below are what the notebooks use; `import clipdg_nb` itself stays light (each is imported
on first use), so `clipdg --help` and the analysis do not pay for torch and open_clip.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "run": "methods", "sweep_configs": "config", "selection_metric": "methods",
    "ZeroShotConfig": "config", "FinetuneConfig": "config", "from_namespace": "config", "METHODS": "config",
    "Run": "runs", "note_runs": "runs", "say_reused": "runs", "tidy": "runs",
    "load_dataset": "data", "dataset_spec": "data", "class_names": "data", "DATASETS": "data",
    "failure_cases": "analysis.tables", "group_accuracy": "analysis.tables",
    "title_suffix": "inputs", "weights_note": "inputs",
    "make_soups": "soups",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value  # once looked up, an ordinary attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
