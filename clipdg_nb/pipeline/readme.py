"""The number blocks of README.md and docs/*.md: written by `clipdg readme-numbers` from run records,
checked by `--check`. Each block lives in one of those files; which one is the file's choice.

A block is the text between `<!-- numbers:NAME cpu="..." torch="..." commit="..." sha256="..." -->`
and `<!-- /numbers:NAME -->`, its body computed by `readme_numbers`. The opening marker
stamps where the records were computed (CPU model, torch version, git commit: the records' own
fields) and the sha256 of the body, so a body edited by hand no longer matches its stamp.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Mapping

from ..paths import atomic_path

BLOCK = re.compile(r"<!-- numbers:(?P<name>[a-z_]+)(?P<stamp>[^>]*)-->\n(?P<body>.*?)\n?<!-- /numbers:(?P=name) -->",
                   re.S)
OPENING = re.compile(r"<!-- (/?)numbers:([a-z_]+)")
_FIELD = re.compile(r'(\w+)="([^"]*)"')


def digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def render(name: str, body: str, provenance: Mapping[str, str]) -> str:
    """One block: the stamped opening marker, the body, the closing marker."""
    stamp = "".join(f' {k}="{v}"' for k, v in {**provenance, "sha256": digest(body)}.items())
    return f"<!-- numbers:{name}{stamp} -->\n{body}\n<!-- /numbers:{name} -->"


def parse(text: str) -> dict[str, dict]:
    """{name: {"body", "stamp": {field: value}, "span"}} of every block in `text`; a marker opened
    and not closed (or closed twice, or a name used twice) is an error naming it."""
    found = {}
    for m in BLOCK.finditer(text):
        if m["name"] in found:
            raise ValueError(f"README block numbers:{m['name']} appears twice; keep one")
        found[m["name"]] = {"body": m["body"], "stamp": dict(_FIELD.findall(m["stamp"])), "span": m.span()}
    markers = [name for _, name in OPENING.findall(text)]
    broken = sorted({n for n in markers if markers.count(n) != 2 * (n in found)})
    if broken:
        raise ValueError(f"README block(s) {broken}: an opening `<!-- numbers:NAME ... -->` line needs its closing "
                         "`<!-- /numbers:NAME -->` line, each on its own line")
    return found


def check(text: str, required=()) -> list[str]:
    """What is wrong with the README's blocks: a required one missing, or a body that is not the one
    its stamp's sha256 names (edited by hand). Empty when all is well."""
    try:
        found = parse(text)
    except ValueError as err:
        return [str(err)]
    problems = [f"block numbers:{n} is missing" for n in required if n not in found]
    problems += [f"block numbers:{n} was edited by hand (its body's sha256 is not its stamp's); rerun "
                 "`clipdg readme-numbers` after `make demo`" for n, b in found.items()
                 if b["stamp"].get("sha256") != digest(b["body"])]
    return problems


def rewrite(text: str, blocks: Mapping[str, tuple[str, Mapping[str, str]] | None],
            placeholders: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """`text` with each block that `blocks` gives ({name: (body, provenance)}) put in place; None
    leaves a block as it is, or, when it was never stamped, puts its `placeholders` text there (what
    to run to fill it). Returns the new text and {name: what happened}. A given block that the
    README lacks is an error: where a block goes is the README's choice."""
    found = parse(text)
    for name, body in (placeholders or {}).items():
        if blocks.get(name) is None and name in found and "sha256" not in found[name]["stamp"]:
            blocks = {**blocks, name: (body, {"records": "none"})}
    missing = [n for n, b in blocks.items() if b is not None and n not in found]
    if missing:
        raise ValueError(f"README has no block(s) {missing}: add the lines `<!-- numbers:NAME -->` and "
                         "`<!-- /numbers:NAME -->` where each belongs, then rerun")
    status = {}
    for name in sorted(found, key=lambda n: -found[n]["span"][0]):  # from the end: earlier spans stay valid
        if blocks.get(name) is None:
            status[name] = "left as it is (its records are absent)" if name in blocks else "left as it is (unknown block)"
            continue
        new = render(name, *blocks[name])
        start, end = found[name]["span"]
        status[name] = "unchanged" if text[start:end] == new else "rewritten"
        text = text[:start] + new + text[end:]
    return text, dict(sorted(status.items()))


def write_numbers(readme: str | Path, blocks, placeholders=None) -> dict[str, str]:
    """Rewrite `readme`'s blocks in place (atomically, only when something changed)."""
    readme = Path(readme)
    old = readme.read_text(encoding="utf-8")
    new, status = rewrite(old, blocks, placeholders)
    if new != old:
        with atomic_path(readme) as tmp:
            tmp.write_text(new, encoding="utf-8")
    return status


def documents(root: str | Path = ".") -> list[Path]:
    """The files whose number blocks `clipdg readme-numbers` keeps: README.md and docs/*.md."""
    root = Path(root)
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def check_files(paths, required=()) -> list[str]:
    """`check` over several files, each problem naming its file; a required block must be in one of
    them, and no block in two."""
    problems, where = [], {}
    for path in map(Path, paths):
        text = path.read_text(encoding="utf-8")
        problems += [f"{path}: {problem}" for problem in check(text)]
        try:
            found = parse(text)
        except ValueError:
            continue  # named by check above
        problems += [f"block numbers:{n} is in both {where[n]} and {path}; keep one" for n in found if n in where]
        where.update({n: path for n in found if n not in where})
    return problems + [f"block numbers:{n} is missing from {', '.join(map(str, paths))}" for n in required
                       if n not in where]


def write_files(paths, blocks, placeholders=None) -> dict[str, str]:
    """`write_numbers` over several files, each given the blocks it holds; {"<file> numbers:<name>":
    what happened}. A block with a body that none of the files holds is an error."""
    held = {Path(p): set(parse(Path(p).read_text(encoding="utf-8"))) for p in paths}
    missing = [n for n, b in blocks.items() if b is not None and not any(n in names for names in held.values())]
    if missing:
        raise ValueError(f"none of {', '.join(map(str, held))} has the block(s) {missing}: add the lines "
                         "`<!-- numbers:NAME -->` and `<!-- /numbers:NAME -->` where each belongs, then rerun")
    status = {}
    for path, names in held.items():
        mine = {n: b for n, b in blocks.items() if n in names}
        status.update({f"{path} numbers:{n}": what for n, what in write_numbers(path, mine, placeholders).items()})
    return status
