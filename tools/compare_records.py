"""Compare two run trees (e.g. the demo's outputs/runs before and after a refactor) field by field.

    python tools/compare_records.py BEFORE/outputs/runs AFTER/outputs/runs

Every `result.json` (runs and soups) and every saved prediction file (`*.parquet`) is matched by its
path under the tree. Records must be equal in every field except those that say when, where and how
fast a run was made (VOLATILE); each tree's own folder is replaced by `<root>` first, so two clones
compare. Predictions must be equal frames. Prints what differs; exits 1 when anything does.

Run ids hold the data's fingerprint, which holds the image files' mtimes: a second `clipdg synth`
writes the same bytes at other times, so run both sides on one data folder (`cp -a` keeps mtimes).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

VOLATILE = {"timings", "created_at", "git_commit", "hardware", "finished_at", "started_at"}


def normalised(path: Path, root: Path):
    text = path.read_text(encoding="utf-8").replace(str(root.resolve()), "<root>")
    return json.loads(text)


def differences(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key in VOLATILE:
                continue
            if key not in a or key not in b:
                out.append(f"{where}{key}: only in {'after' if key not in a else 'before'}")
            else:
                out += differences(a[key], b[key], f"{where}{key}.")
        return out
    return [] if a == b else [f"{where[:-1]}: {a!r} != {b!r}"[:300]]


def compare(before: Path, after: Path) -> int:
    roots = [p.resolve().parent.parent for p in (before, after)]  # the checkout holding outputs/runs
    problems, counts = [], {}
    for kind, pattern in (("records", "result.json"), ("prediction files", "*.parquet")):
        found = [{p.relative_to(tree) for p in tree.rglob(pattern)} for tree in (before, after)]
        for only, name in ((found[0] - found[1], "before"), (found[1] - found[0], "after")):
            problems += [f"{p}: only {name}" for p in sorted(only)]
        for rel in sorted(found[0] & found[1]):
            if pattern == "result.json":
                problems += [f"{rel}: {d}" for d in differences(*(normalised(t / rel, r) for t, r in
                                                                   zip((before, after), roots)))]
            elif not pd.read_parquet(before / rel).equals(pd.read_parquet(after / rel)):
                problems.append(f"{rel}: predictions differ")
        counts[kind] = len(found[0] & found[1])
    print(", ".join(f"{n} {k} compared" for k, n in counts.items()) + f"; ignored fields: {sorted(VOLATILE)}")
    for problem in problems:
        print(problem)
    print("equal" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(compare(Path(sys.argv[1]), Path(sys.argv[2])))
