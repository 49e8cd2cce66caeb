"""The number blocks of README.md and docs/*.md: computed from run records by the functions that
compute them everywhere else (`analysis.findings`, `weight_averaging`, `coverage`, `tables`), never
typed by hand; written by `make readme-numbers` (this script, after `make demo`), checked by
`--check` (in the tests). Which file holds a block is the file's choice. A tool of this repository's
documents, not of the package: a study of one's own reads its records through `clipdg table`, 04
and the report.

    python tools/readme_numbers.py [--check] [--readme FILE ...] [--output-dir D] [--soups-dir D]

A block is the text between `<!-- numbers:NAME cpu="..." torch="..." commit="..." sha256="..." -->`
and `<!-- /numbers:NAME -->`. The stamp says where the records were computed (their CPU model, torch
version and git commit) and the body's sha256, so a body edited by hand no longer matches it. Each
body carries its numbers and the sentences whose verdicts they decide ('above zero' only when the
paired interval is).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from clipdg_nb import analysis, paths, runs
from clipdg_nb.analysis import weight_averaging as wa
from clipdg_nb.analysis.tables import ci_text, markdown_table
from clipdg_nb.data import DEMO_DATASETS
from clipdg_nb.evaluate import CALIBRATION_BINS
from clipdg_nb.paths import atomic_path

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


def documents(root: str | Path = ".") -> list[Path]:
    """The files whose number blocks this script keeps: README.md and docs/*.md (the report's Docs page)."""
    root = Path(root)
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def check_files(files, required=()) -> list[str]:
    """What is wrong with the blocks of `files`, each problem naming its file: a marker not closed, a
    body that is not the one its stamp's sha256 names (edited by hand), a block in two files or a
    required one in none. Empty when all is well."""
    problems, where = [], {}
    for path in map(Path, files):
        try:
            found = parse(path.read_text(encoding="utf-8"))
        except ValueError as err:
            problems.append(f"{path}: {err}")
            continue
        problems += [f"{path}: block numbers:{n} was edited by hand (its body's sha256 is not its stamp's); rerun "
                     "`make readme-numbers` after `make demo`" for n, b in found.items()
                     if b["stamp"].get("sha256") != digest(b["body"])]
        problems += [f"block numbers:{n} is in both {where[n]} and {path}; keep one" for n in found if n in where]
        where.update({n: path for n in found if n not in where})
    return problems + [f"block numbers:{n} is missing from {', '.join(map(str, files))}" for n in required
                       if n not in where]


def rewrite(text: str, bodies: Mapping[str, tuple[str, Mapping[str, str]] | None],
            placeholders: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """`text` with each block that `bodies` gives ({name: (body, provenance)}) put in place; None
    leaves a block as it is, or, when it was never stamped, puts its `placeholders` text there (what
    to run to fill it). Returns the new text and {name: what happened}."""
    found = parse(text)
    for name, body in (placeholders or {}).items():
        if bodies.get(name) is None and name in found and "sha256" not in found[name]["stamp"]:
            bodies = {**bodies, name: (body, {"records": "none"})}
    status = {}
    for name in sorted(found, key=lambda n: -found[n]["span"][0]):  # from the end: earlier spans stay valid
        if bodies.get(name) is None:
            status[name] = "left as it is (its records are absent)" if name in bodies else "left as it is (unknown block)"
            continue
        new = render(name, *bodies[name])
        start, end = found[name]["span"]
        status[name] = "unchanged" if text[start:end] == new else "rewritten"
        text = text[:start] + new + text[end:]
    return text, dict(sorted(status.items()))


def write_files(files, bodies, placeholders=None) -> dict[str, str]:
    """`rewrite` each file in place (atomically, only when something changed) with the blocks it
    holds; {"<file> numbers:<name>": what happened}. A block with a body that none of the files
    holds is an error: where a block goes is the files' choice."""
    texts = {Path(p): Path(p).read_text(encoding="utf-8") for p in files}
    held = {path: set(parse(text)) for path, text in texts.items()}
    missing = [n for n, b in bodies.items() if b is not None and not any(n in names for names in held.values())]
    if missing:
        raise ValueError(f"none of {', '.join(map(str, texts))} has the block(s) {missing}: add the lines "
                         "`<!-- numbers:NAME -->` and `<!-- /numbers:NAME -->` where each belongs, then rerun")
    status = {}
    for path, text in texts.items():
        new, done = rewrite(text, {n: b for n, b in bodies.items() if n in held[path]}, placeholders)
        if new != text:
            with atomic_path(path) as tmp:
                tmp.write_text(new, encoding="utf-8")
        status.update({f"{path} numbers:{n}": what for n, what in done.items()})
    return status


# name -> the experiment whose records it reads ("soups": the demo's soup stage); the demo's blocks
# are required, the others are filled when their experiment has been run
BLOCKS = {"findings": "demo", "soups": "demo", "greedy": "demo", "calibration": "demo",
          "coverage": "coverage_demo", "methods": "methods_demo"}
REQUIRED = ("findings", "soups", "greedy", "calibration")
TREND_METHODS = ("vision_only", "vision_only_probe")  # 04_analysis's default trend line


@dataclass(frozen=True)
class Block:
    body: str                # markdown
    records: tuple           # the run (and soup) records its numbers come from


def provenance(records) -> dict[str, str]:
    """Where the records were computed: CPU model, torch version and git commit(s), each the
    distinct values of the records joined by ', ' ('not recorded' when none says)."""
    def distinct(values):
        return ", ".join(sorted({str(v) for v in values if v})) or "not recorded"
    return {"cpu": distinct((r.get("hardware") or {}).get("cpu") for r in records),
            "torch": distinct((r.get("versions") or {}).get("torch") for r in records),
            "commit": distinct((r.get("git_commit") or "")[:12] for r in records)}


def _num(x: float, signed: bool = False) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:+.3f}" if signed else f"{x:.3f}"


def _names(items) -> str:
    items = list(items)
    return "none" if not items else items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _chosen(output_dir, experiment: str, dataset: str) -> pd.DataFrame:
    df = analysis.load_experiment_runs(output_dir, experiment, dataset)
    return analysis.apply_selection(df, analysis.select_lr(df, "id_val")) if len(df) else df


def findings_block(output_dir, experiment: str, datasets, level: float = 0.95) -> Block:
    """`analysis.findings` per dataset, side by side, and which SWA intervals lie above / below zero."""
    frames = {d: analysis.findings(_chosen(output_dir, experiment, d), d, level=level) for d in datasets}
    questions = list(dict.fromkeys(q for f in frames.values() for q in f["question"]))
    cell = {d: dict(zip(f["question"], f["measured"] + ": " + f["verdict"])) for d, f in frames.items()}
    table = pd.DataFrame({"finding": questions, **{d: [cell[d].get(q, "") for q in questions] for d in datasets}})
    swa = pd.concat([f.assign(dataset=d) for d, f in frames.items()])
    swa = swa[swa["question"].str.startswith("SWA - ")]
    side = {w: [f"{r.dataset} {r.question.split(' (')[0]}" for r in swa.itertuples() if r.holds == h]
            for w, h in (("above", True), ("below", False))}
    text = (f"Of the {len(swa)} paired SWA intervals ({level:.0%}, over seeds; against the last epoch and against "
            f"the epoch chosen on validation), above zero: {_names(side['above'])}; below zero: "
            f"{_names(side['below'])}; the others contain zero.")
    records = runs.load_records(paths.experiment_dir(output_dir, experiment))
    return Block(markdown_table(table) + "\n\n" + text, tuple(r for r in records if r.get("dataset") in datasets))


def _comparison(output_dir, soups_dir, experiment, dataset, level) -> pd.DataFrame:
    """04_analysis's weight-averaging table: effective robustness against the sweep's vision-only trend."""
    chosen = _chosen(output_dir, experiment, dataset)
    fit = analysis.fit_trend(analysis.id_ood_points(chosen), TREND_METHODS) if len(chosen) else None
    return wa.averaging_comparison(*wa.load_soup_stage(soups_dir, experiment, dataset), level=level, fit=fit)


def soups_block(output_dir, soups_dir, experiment: str, datasets, level: float = 0.95) -> Block | None:
    """Every weight-averaging variant against the best single run, paired by seed (`averaging_comparison`),
    and the variants whose paired intervals lie above zero on both ID and OOD test."""
    comparisons = {d: _comparison(output_dir, soups_dir, experiment, d, level) for d in datasets}
    comparisons = {d: c for d, c in comparisons.items() if len(c)}
    if not comparisons:
        return None
    columns, verdicts, seeds = {}, [], set()
    for d, comp in comparisons.items():
        seeds |= set(comp["n"])
        for split, title in (("id_test", "ID"), ("test", "OOD"), ("effective_robustness", "eff. rob.")):
            rows = comp[comp["split"] == split].set_index("variant")
            if len(rows):
                metric = rows["metric"].iloc[0]
                columns[f"{d} {title} ({metric})"] = {
                    v: _num(r["mean"], signed=split == "effective_robustness") if v == wa.BASELINE
                    else ci_text(r["diff"], r["diff_low"], r["diff_high"], 3, True) for v, r in rows.iterrows()}
        both = comp[comp["split"].isin(["id_test", "test"]) & (comp["variant"] != wa.BASELINE)]
        sides = both.assign(side=[analysis.interval_verdict(lo, hi) for lo, hi in zip(both["diff_low"], both["diff_high"])])
        by_variant = sides.groupby("variant")["side"].agg(list)
        above = [wa.variant_label(v) for v in wa.variant_order(by_variant.index) if by_variant[v] == [True, True]]
        below = [wa.variant_label(v) for v in wa.variant_order(by_variant.index) if False in by_variant[v]]
        verdicts.append(f"On {d}, paired intervals above zero on both ID and OOD test: {_names(above)}; "
                        f"below zero on ID or OOD test: {_names(below)}.")
    variants = wa.variant_order(v for c in comparisons.values() for v in c["variant"])
    table = pd.DataFrame({"variant": [wa.variant_label(v) for v in variants],
                          **{k: [col.get(v, "") for v in variants] for k, col in columns.items()}})
    caption = (f"Over {_names(str(s) for s in sorted(seeds))} seeds. Best single run (the lr chosen on ID val, its "
               f"epoch chosen there): its mean; every other row: its difference to it, paired by seed "
               f"[{level:.0%} t-interval]. Eff. rob.: OOD minus the trend of {', '.join(TREND_METHODS)} at the "
               "same ID score.")
    records = [r for d in comparisons for r in wa.soup_stage_records(soups_dir, experiment, d)]
    return Block(caption + "\n\n" + markdown_table(table) + "\n\n" + " ".join(verdicts), tuple(records))


def greedy_block(soups_dir, experiment: str, datasets) -> Block | None:
    """Per dataset and seed, the runs the greedy soup kept (and their learning rates) of how many."""
    rows, records = [], []
    for d in datasets:
        recs = wa.soup_stage_records(soups_dir, experiment, d)
        lrs = {r["run_id"]: r.get("lr") for r in recs if r.get("kind") != "soup"}
        soups = sorted((r for r in recs if r.get("kind") == "soup"), key=lambda r: (r["method"], r["fraction"], r["seed"]))
        keys = [(r["method"], r["fraction"], r["seed"]) for r in soups]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"{paths.experiment_dir(soups_dir, experiment)}/soups holds several soups of {d} "
                             f"{twice} (method, fraction, seed); remove the stale ones or rerun the soups stage")
        for s in soups:
            kept = s["soups"]["greedy_soup"]["ingredients"]
            rows.append({"dataset": d, "method": s["method"], "fraction": f"{s['fraction']:g}", "seed": s["seed"],
                         "kept": f"{len(kept)} of {len(s['soups']['uniform_soup']['ingredients'])}",
                         "kept runs' lr": ", ".join(f"{lrs.get(k, float('nan')):g}" for k in kept)})
        records += recs
    if not rows:
        return None
    return Block(markdown_table(pd.DataFrame(rows)), tuple(records))


def calibration_block(output_dir, soups_dir, experiment: str, datasets, level: float = 0.95,
                      clip_method: str = "finetune") -> Block | None:
    """Mean ECE before -> after ID-val temperature scaling, ID and OOD test, per weight variant of the
    soup stage and per fraction of the sweep's fine-tuned runs; how many variants it lowers / raises."""
    columns, sentences, records, labels = {}, [], [], []
    for d in datasets:
        chosen = _chosen(output_dir, experiment, d)
        recs = wa.soup_stage_records(soups_dir, experiment, d)
        stage = wa.averaging_calibration(recs, wa.load_soup_stage(soups_dir, experiment, d)[0])
        sweep_recs = wa.records_of(output_dir, experiment, chosen["run_id"]) if len(chosen) else []
        sweep = wa.calibration_rows(sweep_recs)
        sweep = sweep[sweep["headline"] & (sweep["method"] == clip_method)]
        if stage.empty and sweep.empty:
            continue
        parts = [wa.calibration_table(stage, level, ("id_test", "test")).assign(label=lambda t: t["variant"].map(wa.variant_label)),
                 wa.calibration_table(sweep, level, ("id_test", "test")).assign(
                     label=lambda t: "sweep finetune, fraction " + t["fraction"].map("{:g}".format))]
        order = [wa.variant_label(v) for v in wa.variant_order(stage["variant"])] + [f"sweep finetune, fraction {f:g}"
                                                                            for f in sorted(sweep["fraction"].unique())]
        table = pd.concat(parts).pivot_table(index=["label", "split"], columns="quantity", values="mean")
        table = table.reindex(pd.MultiIndex.from_product([order, ["id_test", "test"]], names=["label", "split"]))
        for split, title in (("id_test", "ID"), ("test", "OOD")):
            part = table.xs(split, level="split")
            columns[f"{d} {title} ECE"] = {k: f"{r['ece']:.3f} -> {r['ece_ts']:.3f}" for k, r in part.iterrows()}
            labels += list(part.index)
        lowered = {s: int((x["ece_ts"] < x["ece"]).sum()) for s in ("id_test", "test") for x in [table.xs(s, level="split")]}
        n = len(order)
        t = pd.concat([stage, sweep])["temperature"]
        sentences.append(f"On {d}, temperature scaling fitted on ID val (temperatures {t.min():.2f}-{t.max():.2f}) lowers "
                         f"the mean ID ECE in {lowered['id_test']} of {n} rows and the mean OOD ECE in "
                         f"{lowered['test']} of {n}.")
        records += recs + sweep_recs
    if not columns:
        return None
    labels = list(dict.fromkeys(labels))
    frame = pd.DataFrame({"weights": labels, **{k: [c.get(v, "") for v in labels] for k, c in columns.items()}})
    caption = f"Mean over seeds of ECE ({CALIBRATION_BINS} bins) before -> after temperature scaling."
    return Block(caption + "\n\n" + markdown_table(frame) + "\n\n" + " ".join(sentences), tuple(records))


def coverage_block(output_dir, experiment: str = "coverage_demo", level: float = 0.95) -> Block | None:
    """Zero-shot CLIP and CLIP minus vision-only (OOD, paired by seed) per caption coverage and fraction
    (`coverage.gap_by_coverage`), and OOD accuracy on the classes named / unnamed in the captions."""
    from clipdg_nb.analysis import coverage

    folder = paths.experiment_dir(output_dir, experiment)
    if not folder.is_dir():
        return None
    records = runs.load_records(folder)
    parts = []
    for d in sorted({r["dataset"] for r in records}):
        df = coverage.with_coverage(analysis.load_experiment_runs(output_dir, experiment, d), output_dir, experiment)
        gaps = coverage.gap_by_coverage(df, level=level)
        zero = {c: analysis.zero_shot_reference(sub, "test").get(d, np.nan) for c, sub in df.groupby("coverage")}
        wide = pd.DataFrame({"coverage": [f"{c:g}" for c in sorted(zero, reverse=True)],
                             f"zero-shot CLIP ({analysis.headline_metric(d, 'test')})": [_num(zero[c]) for c in sorted(zero, reverse=True)]})
        for f, sub in gaps.groupby("fraction"):
            col = dict(zip(sub["coverage"], [ci_text(m, lo, hi, 3, True) for m, lo, hi in zip(sub["mean_gap"], sub["low"], sub["high"])]))
            wide[f"finetune - vision_only at {f:g}"] = [col.get(c, "") for c in sorted(zero, reverse=True)]
        named = coverage.accuracy_by_naming(output_dir, experiment, d, splits=("test",))
        side = {h: [f"coverage {c:g} at fraction {f:g}" for c, f, lo, hi in gaps[["coverage", "fraction", "low", "high"]].itertuples(index=False)
                    if analysis.interval_verdict(lo, hi) == h] for h in (True, False)}
        parts.append(f"{d}, OOD test:\n\n" + markdown_table(wide) + f"\n\nCLIP fine-tuned above its vision-only twin (the "
                     f"whole interval above zero): {_names(side[True])}; below it: {_names(side[False])}.")
        if len(named):
            acc = named.pivot_table(index=["coverage", "method", "fraction"], columns="named", values="accuracy").reset_index()
            acc = acc.sort_values(["coverage", "method", "fraction"], ascending=[False, True, True])
            acc[acc.columns[3:]] = acc[acc.columns[3:]].map(_num)
            parts.append(f"{d}, OOD test accuracy on the classes named / unnamed in the captions (mean over seeds):\n\n"
                         + markdown_table(acc.assign(coverage=acc["coverage"].map("{:g}".format),
                                                     fraction=acc["fraction"].map("{:g}".format))))
    return Block("\n\n".join(parts), tuple(records)) if parts else None


def methods_block(output_dir, experiment: str = "methods_demo", level: float = 0.95) -> Block | None:
    """`clipdg table --experiment methods_demo --format markdown`: every method and weight variant."""
    from clipdg_nb.analysis.tables import format_headline

    folder = paths.experiment_dir(output_dir, experiment)
    if not folder.is_dir():
        return None
    table = analysis.compare_experiments({experiment: analysis.load_experiment_runs(output_dir, experiment)}, level=level)
    body = format_headline(table, "markdown", level=level, selection="learning rate chosen on id_val", headings=False)
    return Block(body.strip(), tuple(runs.load_records(folder)))


def update(files, output_dir: str | Path = "outputs/runs", soups_dir: str | Path = "outputs/runs/soups") -> dict[str, str]:
    """Every block of `files` rewritten from the records under `output_dir`
    (the soup stage's under `soups_dir`); a block whose experiment was not run is left as it is, or
    says what to run when never stamped."""
    demo, datasets = BLOCKS["findings"], DEMO_DATASETS
    have = paths.experiment_dir(output_dir, demo).is_dir()
    made = {"findings": findings_block(output_dir, demo, datasets) if have else None,
            "soups": soups_block(output_dir, soups_dir, demo, datasets) if have else None,
            "greedy": greedy_block(soups_dir, demo, datasets),
            "calibration": calibration_block(output_dir, soups_dir, demo, datasets) if have else None,
            "coverage": coverage_block(output_dir, BLOCKS["coverage"]),
            "methods": methods_block(output_dir, BLOCKS["methods"])}
    absent = [name for name in REQUIRED if made[name] is None]
    if absent:
        raise FileNotFoundError(f"no records for the README block(s) {absent} under {output_dir} and "
                                f"{soups_dir}: run `make demo` (clipdg demo) first")
    waiting = {n: f"Not written yet: no records of `{BLOCKS[n]}` under {output_dir}. Run `clipdg run "
                  f"parameters/{BLOCKS[n]}.yaml --jobs 2`, then `make readme-numbers`." for n, b in made.items() if b is None}
    return write_files(files, {n: None if b is None else (b.body, provenance(b.records)) for n, b in made.items()},
                       waiting)


def main(argv=None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="rewrite the number blocks of README.md and docs/*.md from the "
                                     "demo's run records (after make demo); --check: fail when a block was edited by hand")
    parser.add_argument("--check", action="store_true", help="only check each block's body against its stamped sha256")
    parser.add_argument("--readme", nargs="+", metavar="FILE", help="the files (default: README.md and docs/*.md)")
    parser.add_argument("--output-dir", default="outputs/runs")
    parser.add_argument("--soups-dir", default="outputs/runs/soups", help="output_dir of the demo's soups stage")
    args = parser.parse_args(argv)
    files = args.readme or documents()
    if args.check:
        problems = check_files(files, REQUIRED)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    try:
        status = update(files, args.output_dir, args.soups_dir)
    except (ValueError, FileNotFoundError) as err:
        print(f"readme_numbers: error: {err}", file=sys.stderr)
        return 2
    for name, what in status.items():
        print(f"{name}: {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
