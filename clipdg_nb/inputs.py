"""What a run starts from, said out loud: its data folder and its weights.

With no parameters the notebooks run the offline default (`clipdg synth` data, `clipdg pretrain-tiny`
weights). `check_inputs` stops a run whose inputs are missing with the command that makes them;
`weights_of` names the weights a run starts from ("random init" for `pretrained=None`) and
`weights_note` prints it. `run_identity` is what a run id and the reuse check hold: `cfg.identity()`
with weights files named by their digest, plus the dataset folder's fingerprint (`fingerprint.py`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .config import DEMO_DATA, METHODS, TINY_CLIP_WEIGHTS, TINY_VISION_WEIGHTS
from .data import data_present, dataset_spec
from .fingerprint import dataset_fingerprint, file_digest
from .paths import project_root, resolve
from .paths import check_writable, experiment_dir

RANDOM = "random init"
MAKE_DEFAULT = "`make demo` (everything), or `clipdg synth && clipdg pretrain-tiny` (data and weights only)"
REMOTE_MODELS = ("local-dir:", "hf-hub:")  # the model name itself holds the weights


class MissingInputsError(FileNotFoundError):
    """The data folder or a weights file a run needs is not there; the message says what to run."""


def _vision_method(cfg) -> bool:
    return METHODS[cfg.method].encoder == "vision"


def clip_weights(cfg) -> str:
    """The CLIP weights: the model itself ('local-dir:...'), a tag, a file as given, or 'random init'."""
    if cfg.model.startswith(REMOTE_MODELS):
        return cfg.model
    return RANDOM if cfg.pretrained is None else str(cfg.pretrained)


def vision_weights(cfg) -> str:
    """The vision-only baseline's starting weights, as 'arch: weights'."""
    if cfg.vision_arch == "clip-visual" and cfg.vision_weights in (None, "imagenet"):
        return f"clip-visual: {clip_weights(cfg)}"  # the CLIP model's own image tower
    return f"{cfg.vision_arch}: {RANDOM if cfg.vision_weights is None else cfg.vision_weights}"


def weights_of(cfg) -> str:
    """What the run's model starts from (the run record's `weights`); 'random init' is said as such."""
    return vision_weights(cfg) if _vision_method(cfg) else clip_weights(cfg)


def is_random(cfg) -> bool:
    return weights_of(cfg).endswith(RANDOM)


def weights_note(configs) -> str:
    """One line per distinct starting point of the given configs; a WARNING line for random weights."""
    configs = [configs] if not isinstance(configs, (list, tuple)) else list(configs)
    lines = []
    for cfg in configs:
        weights, who = weights_of(cfg), f"{cfg.method} ({cfg.model})"
        if weights.endswith(RANDOM):
            line = (f"WARNING: {who} starts from RANDOMLY INITIALISED weights ({weights}), as asked "
                    "(pretrained=None): its numbers say nothing about CLIP. For pretrained weights set "
                    "pretrained to a tag ('openai') or a weights file; the offline tiny ones come from "
                    f"{MAKE_DEFAULT}.")
        else:
            line = f"weights: {who} starts from {weights}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


def title_suffix(configs) -> str:
    """' (RANDOM-INIT weights)' for figure titles when any of the configs starts from random weights."""
    configs = [configs] if not isinstance(configs, (list, tuple)) else configs
    return " (RANDOM-INIT weights)" if any(is_random(c) for c in configs) else ""


def weight_files(cfg) -> Iterable[tuple[str, str]]:
    """(parameter, value) of every weights file the run will read (tags and None excluded)."""
    import open_clip

    from .models import register_tiny_configs

    needs_clip = not _vision_method(cfg) or (cfg.vision_arch == "clip-visual"
                                             and cfg.vision_weights in (None, "imagenet"))
    if needs_clip and cfg.pretrained is not None and not cfg.model.startswith(REMOTE_MODELS):
        register_tiny_configs()
        if not open_clip.pretrained.is_pretrained_cfg(cfg.model, str(cfg.pretrained)):
            yield "pretrained", str(cfg.pretrained)
    if _vision_method(cfg) and cfg.vision_weights not in (None, "imagenet"):
        yield "vision_weights", str(cfg.vision_weights)


WEIGHT_PARAMS = ("pretrained", "vision_weights")


def run_inputs(cfg) -> dict:
    """What the run reads, by content (the run record's `inputs`): {'dataset': {name, version,
    folder, metadata, images, digest}, 'weights': {parameter: {path, sha256, bytes}}}. Weights are
    listed for each parameter of the identity that names a file (tags and None name none); paths
    and folders are there to read, never compared."""
    spec = dataset_spec(cfg.dataset)
    folder = Path(cfg.root_dir) / spec.folder
    memo = Path(cfg.cache_dir)
    dataset = {"name": cfg.dataset, "version": spec.version, "folder": str(folder),
               **dataset_fingerprint(folder, memo)}
    identity, weights = cfg.identity(), {}
    for param in WEIGHT_PARAMS:
        value = identity.get(param)
        if value is None or value == "imagenet" or (param == "pretrained" and cfg.model.startswith(REMOTE_MODELS)):
            continue
        path = resolve(value)
        if path.is_file():
            weights[param] = {"path": str(path), "sha256": file_digest(path, memo), "bytes": path.stat().st_size}
    return {"dataset": dataset, "weights": weights}


def run_identity(cfg) -> tuple[dict, dict]:
    """(identity, inputs): the identity a run id and the reuse check hold, and `run_inputs(cfg)`.

    The identity is `cfg.identity()` with each weights file replaced by 'sha256:<digest>' (so the
    same bytes by another path are one run, other bytes at one path another) and `data`, the
    digest of the dataset folder's fingerprint ('missing' when there is none yet: such a run stops
    at `check_inputs` before computing anything)."""
    inputs = run_inputs(cfg)
    identity = dict(cfg.identity())
    for param, found in inputs["weights"].items():
        identity[param] = f"sha256:{found['sha256']}"
    identity["data"] = inputs["dataset"].get("digest", "missing")
    return identity, inputs


def missing_inputs(cfg) -> list[str]:
    """What the run needs and lacks, one readable line each (empty when all is there)."""
    missing = []
    spec = dataset_spec(cfg.dataset)
    data = Path(cfg.root_dir)
    if not getattr(cfg, "download", False) and not data_present(data, cfg.dataset):
        missing.append(f"data: root_dir={str(cfg.root_dir)!r} holds no {spec.folder}/")
    from .models.weights import folder_problem
    for name, value in weight_files(cfg):
        path = resolve(value)
        if path.is_dir():
            missing.append(f"weights: {folder_problem(path, name)}")
        elif not path.is_file():
            missing.append(f"weights: {name}={value!r} is not a file (looked at {path}) nor a tag open_clip knows "
                           f"for {cfg.model!r}")
    return missing


def check_inputs(cfg) -> None:
    """Raise MissingInputsError naming what is missing and the command that makes it."""
    missing = missing_inputs(cfg)
    if not missing:
        return
    root = project_root()
    defaults = (Path(cfg.root_dir) == resolve(DEMO_DATA)
                or {getattr(cfg, "pretrained", None), getattr(cfg, "vision_weights", None)}
                & {TINY_CLIP_WEIGHTS, TINY_VISION_WEIGHTS})
    how = (f"These are the offline default's inputs: run {MAKE_DEFAULT} in {root}. " if defaults else "")
    raise MissingInputsError(
        "the run cannot start:\n  " + "\n  ".join(missing) + "\n" + how
        + "Or point root_dir at the folder that holds the WILDS data (download=True fetches it), pretrained at an "
          "open_clip tag ('openai') or a weights file, or pass pretrained=None for a random-init CLIP.")


def weights_location(value: str | None) -> str | None:
    """A weights file named relative to the repository root, as a path; tags and None unchanged."""
    if value is None or value == "imagenet":
        return value
    path = resolve(value)
    return str(path) if path.is_file() else value


def up_front_problem(cfg) -> Exception | None:
    """What can fail cheaply fails before any data is loaded, in this order: the output and cache
    folders are writable; the data and weights are there (the message says what to run to make
    them); the weights file is readable and fits (its header)."""
    try:
        for what, folder in (("output_dir", experiment_dir(cfg.output_dir, cfg.experiment)), ("cache_dir", Path(cfg.cache_dir))):
            check_writable(folder, what)
        check_inputs(cfg)
    except (OSError, ValueError) as e:  # MissingInputsError is a FileNotFoundError
        return e
    return preflight(cfg)


def weight_shapes(path, what: str = "weights file") -> dict:
    """`models.weights.weight_shapes`, imported when first called: this module is imported by the
    runner's pool workers (through `runs`), which need neither torch nor open_clip."""
    from .models.weights import weight_shapes as shapes

    return shapes(path, what)


def weights_file_problem(cfg, what: str, value: str) -> Exception | None:
    """One weights file of the run (`weight_files`): readable (its header) and of the architecture
    the config asks for, judged from tensor shapes without loading it. The error, or None."""
    from .models.clip import clip_weights_mismatch
    from .models.vision import vision_weights_mismatch

    path = weights_location(value)
    try:
        found = weight_shapes(path, what)
    except (OSError, ValueError) as e:
        return e
    if what == "pretrained" or cfg.vision_arch == "clip-visual":
        return clip_weights_mismatch(cfg.model, path, what, found)

    return vision_weights_mismatch(found, path, cfg.vision_arch, dataset_spec(cfg.dataset).n_classes, image_size(cfg))


def preflight(cfg) -> Exception | None:
    """The weights files this run reads are readable (their headers). Returns the error (so that
    rank 0 can share it), or None."""
    try:
        for what, value in weight_files(cfg):
            weight_shapes(weights_location(value), what)
    except (OSError, ValueError) as e:
        return e
    return None


def vision_image_size(cfg) -> int:
    """The image size of a vision-only tower that is not CLIP's own (vit_b_32: 224; tiny: the tiny
    CLIP config's)."""
    from .models.clip import config_image_size
    return 224 if cfg.vision_arch == "vit_b_32" else (config_image_size(cfg.model) or 32)


def image_size(cfg) -> int:
    """The image size a run decodes, read from configs without loading any weights (`clipdg prepare`)."""
    from .models.clip import config_image_size
    if METHODS[cfg.method].encoder == "vision" and cfg.vision_arch != "clip-visual":
        return vision_image_size(cfg)
    return config_image_size(cfg.model) or 224
