"""How training shows its progress: live bars in JupyterLab or a terminal, one line per epoch
under papermill, nothing when asked.

Under papermill `tqdm.auto` would draw ipywidgets bars nobody sees and leave stale widget state in
the executed notebook, so runs by `clipdg run` ($CLIPDG_SWEEP_MANIFEST) or papermill with parameters
(an injected "# Parameters" cell) print plain lines. $CLIPDG_PROGRESS (bars | text | off) overrides.
"""
from __future__ import annotations

import os

ENV_VAR = "CLIPDG_PROGRESS"
MODES = ("bars", "text", "off")


def under_papermill() -> bool:
    """True in a kernel that papermill (or `clipdg run`) executes, as far as the kernel can tell."""
    from .paths import MANIFEST_ENV

    if os.environ.get(MANIFEST_ENV):
        return True
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    history = (getattr(shell, "user_ns", None) or {}).get("In") or []
    return any(isinstance(src, str) and src.lstrip().startswith("# Parameters") for src in history)


def progress_mode(progress: bool | str = True) -> str:
    """'bars' (tqdm.auto: widgets in JupyterLab, text bars in a terminal), 'text' (a line per epoch)
    or 'off'. `progress` may name a mode; True means: $CLIPDG_PROGRESS, else text under papermill,
    else bars."""
    if progress is False or progress is None:
        return "off"
    if isinstance(progress, str):
        if progress not in MODES:
            raise ValueError(f"progress={progress!r}; choose one of {list(MODES)} or True / False")
        return progress
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in MODES:
        return env
    return "text" if under_papermill() else "bars"


class EpochProgress:
    """Per-epoch progress of one `fit`: an epoch bar (and a step bar that vanishes) in 'bars' mode,
    one printed line per epoch in 'text' mode."""

    def __init__(self, mode: str, epochs: int, start_epoch: int = 0, what: str = "training"):
        self.mode, self.epochs = mode, epochs
        self.bar = None
        if mode == "bars":
            from tqdm.auto import tqdm
            self._tqdm = tqdm
            self.bar = tqdm(total=epochs, initial=start_epoch, desc=what, unit="epoch")
        elif mode == "text":
            resumed = f", resumed after epoch {start_epoch}" if start_epoch else ""
            print(f"{what}: {epochs} epochs{resumed}", flush=True)

    def steps(self, loader, epoch: int):
        """The epoch's batches, wrapped in a step bar that disappears when done ('bars' mode only)."""
        if self.mode != "bars":
            return loader
        return self._tqdm(loader, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, unit="batch")

    def end_epoch(self, epoch: int, loss: float, name: str, score: float, best: float, best_epoch: int,
                  seconds: float) -> None:
        if self.mode == "bars":
            self.bar.set_postfix({"loss": f"{loss:.3f}", name: f"{score:.4f}",
                                  "best": f"{best:.4f} (epoch {best_epoch})"})
            self.bar.update(1)
        elif self.mode == "text":
            print(f"epoch {epoch + 1}/{self.epochs}: train loss {loss:.4f}, {name} {score:.4f} "
                  f"(best {best:.4f} at epoch {best_epoch}), {seconds:.1f} s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
