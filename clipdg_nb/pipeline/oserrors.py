"""OS errors said in one line: what failed, on which path, and how much space is left there (a full
disk shows up as ENOSPC, safetensors' "os error 28", a quota's EDQUOT: the user needs the place)."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Iterable

_NO_SPACE = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def out_of_space(err: BaseException | str) -> bool:
    """The error (or its text) says the disk or quota is full."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(s in str(err) for s in _NO_SPACE)


def free_space(path: str | os.PathLike) -> str:
    """'1.2 GB free on the filesystem of /data (of 252.0 GB)', for `path` or its nearest existing folder."""
    path = Path(os.path.abspath(path))
    where = next(p for p in (path, *path.parents) if p.exists())
    try:
        usage = shutil.disk_usage(where)
    except OSError as err:
        return f"free space of {where} unknown ({err.strerror or err})"
    return f"{size_text(usage.free)} free on the filesystem of {where} (of {size_text(usage.total)})"


def size_text(n: float) -> str:
    """Bytes in decimal units, MB at the least (sizes of weights, space on a disk)."""
    return f"{n / 1e12:.1f} TB" if n >= 1e12 else f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def describe_os_error(err: BaseException, paths: Iterable[str | os.PathLike] = ()) -> str:
    """One line: the error, the file it names (else `paths`) and the free space there; for a full
    disk, what to do."""
    names = [p for p in (getattr(err, "filename", None), getattr(err, "filename2", None)) if p]
    where = [os.fspath(p) for p in (names or list(paths))]
    text = (f"{err.strerror}" if isinstance(err, OSError) and err.strerror else str(err)) or type(err).__name__
    if isinstance(err, OSError) and names:
        text = f"{text}: {', '.join(map(str, names))}"
    elif where and not any(w in text for w in where):
        text = f"{text} (writing under {', '.join(dict.fromkeys(where))})"
    return f"{type(err).__name__}: {text}; {space_note(where, out_of_space(err))}".rstrip("; ")


def space_note(paths: Iterable[str | os.PathLike], full: bool = True) -> str:
    """The free space where `paths` are; with `full`, what to do about a full disk."""
    text = "; ".join(dict.fromkeys(free_space(p) for p in paths))
    if full:
        text += ". The disk (or quota) is full: free space there, or point the outputs elsewhere, and run again"
    return text
