"""What a report says about its point, and the index of a report folder.

A point's facts come from the runner's markers beside its executed notebook (`<point>.done.json`:
parameters and run folders; `<point>.failed.json`: the error) and from the run records the done
marker lists (`result.json`: metrics, versions, git commit, data root, weights).
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import os
import re
from pathlib import Path

from ..data import DATASETS, SPLIT_TITLES, headline_metric
from ..paths import project_root
from ..runs import Run, experiment_dir, load_records, read_json, write_bytes
from .experiment import point_name

PLOTLYJS_FILE = "plotly.min.js"
ID_SPLIT, OOD_SPLIT = "id_test", "test"
_META = re.compile(r"""<meta\b[^>]*\bname=["']clipdg-report["'][^>]*>""")
_CONTENT = re.compile(r"""\bcontent=(["'])(.*?)\1""", re.DOTALL)
_WEIGHTS = ("model", "pretrained", "vision_arch", "vision_weights")


# ---------------------------------------------------------------------------------------------
# A point: markers and run records
# ---------------------------------------------------------------------------------------------

def report_roots(notebooks_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """Folders a done marker's (relative) run folders may be relative to: `root` if given, the folder
    holding `outputs/notebooks`, the project root."""
    found = [Path(root).resolve()] if root is not None else []
    found += [Path(notebooks_dir).resolve().parent.parent, project_root()]
    return list(dict.fromkeys(found))


def _record(run_dir: str, roots: list[Path]) -> dict | None:
    d = Path(run_dir)
    for folder in [d] if d.is_absolute() else [r / d for r in roots]:
        record = Run(folder).record()
        if record is not None:
            return record
    return None


def point_info(notebook: str | os.PathLike, roots: list[Path]) -> dict:
    """status (done | failed | unknown), failure (the failed marker), parameters (as given),
    records (the run records its done marker lists that exist), missing (the others)."""
    notebook = Path(notebook)
    if notebook.name.endswith(".failed.ipynb"):  # the runner keeps a failed execution beside the point's
        notebook = notebook.with_name(notebook.name[:-len(".failed.ipynb")] + ".ipynb")
        done_path = notebook.with_suffix(".no-done-marker")  # this page shows the failure, not the success
    else:
        done_path = notebook.with_suffix(".done.json")
    failed_path = notebook.with_suffix(".failed.json")
    done, failed = read_json(done_path), read_json(failed_path)
    done, failed = (m if isinstance(m, dict) else None for m in (done, failed))
    if failed and (not done or failed_path.stat().st_mtime >= done_path.stat().st_mtime):
        status = "failed"
    else:
        status = "done" if done else "unknown"
    records, missing = [], []
    for d in (done or {}).get("run_dirs", []) if status == "done" else []:
        record = _record(d, roots)
        (records if record is not None else missing).append(record if record is not None else d)
    parameters = ((done if status == "done" else failed) or {}).get("parameters") or {}
    read, read_from = [], None
    if status == "done" and not done.get("run_dirs") and parameters.get("experiment") and parameters.get("output_dir"):
        # a notebook that writes no run but reads an experiment's (04_analysis): those runs' provenance
        for base in roots:
            folder = experiment_dir(base / parameters["output_dir"], parameters["experiment"])
            if folder.is_dir():
                read_from = folder
                read = [r for r in load_records(folder) if parameters.get("dataset") in (None, r.get("dataset"))]
                break
    return {"status": status, "failure": failed if status == "failed" else None, "records": records,
            "missing": missing, "parameters": parameters, "read": read, "read_from": read_from}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(_fmt(v) for v in value)
    return str(value)


def grid_values(name: str, parameters: dict) -> str:
    """The point's grid values ('dataset=fmow, fraction=0.1, seed=0'), read back from its name and
    parameters; the name itself when they do not match it."""
    padded = f"_{name}_"
    found = [(padded.find(f"_{point_name({k: v})}_"), k, v) for k, v in parameters.items()]
    found = sorted(f for f in found if f[0] >= 0)
    if not found:
        return "" if name == "default" else name
    return ", ".join(f"{k}={_fmt(v)}" for _, k, v in found)


def notebook_title(nb) -> str | None:
    """The first markdown heading of a notebook."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip().replace("`", "")
    return None


def page_meta(meta: dict) -> str:
    return f'<meta name="clipdg-report" content="{html.escape(json.dumps(meta))}">'


def read_page_meta(page: Path) -> dict:
    """The page's own facts (mode, notebook title, grid values) from its head; {} if absent."""
    with open(page, encoding="utf-8", errors="replace") as fh:
        tag = _META.search(fh.read(8192))
    content = _CONTENT.search(tag.group(0)) if tag else None
    try:
        return json.loads(html.unescape(content.group(2))) if content else {}
    except ValueError:
        return {}


def headline_rows(records: list[dict]) -> list[dict]:
    """Per run record: label, dataset, and its ID / OOD headline metric and value."""
    rows = []
    for rec in records:
        ds, metrics = rec.get("dataset"), rec.get("metrics") or {}
        if ds not in DATASETS:
            continue
        label = rec.get("method", "?") + (f" lr={rec['lr']:g}" if isinstance(rec.get("lr"), (int, float)) else "")
        row = {"label": label, "dataset": ds}
        for key, split in (("id", ID_SPLIT), ("ood", OOD_SPLIT)):
            row[f"{key}_metric"] = headline_metric(ds, split)
            row[key] = (metrics.get(split) or {}).get(row[f"{key}_metric"])
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# HTML pieces of a page
# ---------------------------------------------------------------------------------------------

def status_html(info: dict) -> str:
    if info["status"] == "failed":
        f = info["failure"] or {}
        why = f"{f.get('ename', '')}: {f.get('evalue', '')}".strip(": ")
        return (f'<span class="clipdg-failed" title="{html.escape(why)}">FAILED</span>'
                f'<span class="clipdg-why">{html.escape(why[:160])}</span>')
    if info["status"] == "done":
        return '<span class="clipdg-done">done</span>'
    return '<span class="clipdg-unknown" title="no done / failed marker beside the notebook">no marker</span>'


def _distinct(values) -> list[str]:
    return list(dict.fromkeys(_fmt(v) for v in values if v not in (None, "", [])))


def _code(values) -> str:
    return ", ".join(f"<code>{html.escape(v)}</code>" for v in values)


def provenance_html(info: dict, nb=None) -> str:
    """A collapsible block: versions, git commit, data root, weights (from the run records the point
    wrote, else those it read), the parameters as given, the run records and when it ran."""
    recs = info["records"] or info.get("read") or []
    versions: dict[str, list] = {}
    for rec in recs:
        for k, v in (rec.get("versions") or {}).items():
            versions.setdefault(k, []).append(v)
    version_text = [f"{k} {' / '.join(_distinct(v))}" for k, v in versions.items() if _distinct(v)]
    commits = _distinct(r.get("git_commit") for r in recs)
    data = _distinct(r.get("root_dir") or (r.get("params") or {}).get("root_dir") for r in recs)
    rows = [("library versions", version_text), ("git commit", commits), ("data root", data)]
    rows += [(key, _distinct((r.get("params") or {}).get(key) for r in recs)) for key in _WEIGHTS]
    rows = [(k, _code(v)) for k, v in rows if v]
    given = info["parameters"] or ((nb.metadata.get("papermill") or {}).get("parameters") if nb is not None else {}) or {}
    rows.append(("parameters as given", "<br>".join(f"<code>{html.escape(k)} = {html.escape(json.dumps(v))}</code>"
                                                   for k, v in given.items()) or "&mdash;"))
    runs = [f"<code>{html.escape(str(r.get('run_id')))}</code> ({html.escape(str(r.get('created_at', '')))})"
            for r in info["records"]]
    runs += [f"<code>{html.escape(str(d))}</code> <b>missing</b>" for d in info["missing"]]
    if not info["records"] and info.get("read"):
        runs.append(f"none written; it read {len(info['read'])} run record(s) under "
                    f"<code>{html.escape(str(info['read_from']))}</code> (the rows above are theirs)")
    rows.append(("run records", "<br>".join(runs) or "none listed (this notebook writes none, or it has no done marker)"))
    pm = (nb.metadata.get("papermill") or {}) if nb is not None else {}
    if pm.get("end_time"):
        kernel = (nb.metadata.get("language_info") or {}).get("version")
        rows.append(("executed", html.escape(f"{pm.get('start_time')} .. {pm.get('end_time')} "
                                             f"({pm.get('duration') or 0:.0f} s), papermill {pm.get('version')}"
                                             + (f", Python {kernel}" if kernel else ""))))
    n = f"{len(info['records'])} run record(s)" if info["records"] or not info.get("read") else \
        f"{len(info['read'])} run record(s) read"
    summary = [n] + [f"git {c[:10]}" for c in commits[:2]]
    summary += [v for v in version_text if v.split()[0] in ("torch", "open_clip")] + [f"data {d}" for d in data[:1]]
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return (f'<details class="clipdg-provenance"><summary><b>Provenance</b> &middot; '
            f'{html.escape(" · ".join(summary))}</summary><table>{table}</table></details>')


# ---------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------

_INDEX_CSS = """<style>
body{font:14px system-ui,sans-serif;margin:24px 32px;color:#1f2328}
h2{margin-top:32px;border-bottom:1px solid #d0d7de}
table.points{border-collapse:collapse;margin:6px 0 18px}
table.points>tbody>tr>td,table.points>thead>tr>th{border-bottom:1px solid #e5e7eb;padding:5px 12px 5px 0;
 vertical-align:top;text-align:left}
table.hl td,table.hl th{padding:0 10px 0 0;font-size:12px;font-variant-numeric:tabular-nums;text-align:left}
table.hl th{color:#666;font-weight:normal}
tr.failed{background:#fdecea}
.clipdg-failed{color:#fff;background:#c62828;padding:1px 7px;border-radius:3px;font-weight:600}
.clipdg-why{display:block;color:#8a1c1c;font-size:12px;max-width:420px}
.clipdg-done{color:#1b5e20}.clipdg-unknown{color:#666}.muted{color:#666}
</style>"""


def _headline_cell(rows: list[dict]) -> str:
    if not rows:
        return '<span class="muted">&mdash;</span>'
    out, last = [], None
    for r in rows:
        if (r["id_metric"], r["ood_metric"]) != last:
            last = (r["id_metric"], r["ood_metric"])
            out.append(f"<tr><th></th><th>{SPLIT_TITLES[ID_SPLIT]} {html.escape(r['id_metric'])}</th>"
                       f"<th>{SPLIT_TITLES[OOD_SPLIT]} {html.escape(r['ood_metric'])}</th></tr>")
        vals = [f"{v:.3f}" if isinstance(v, (int, float)) else "&mdash;" for v in (r["id"], r["ood"])]
        out.append(f"<tr><td>{html.escape(r['label'])}</td><td>{vals[0]}</td><td>{vals[1]}</td></tr>")
    return f'<table class="hl">{"".join(out)}</table>'


def index_entries(out_dir: Path, notebooks_dir: Path, roots: list[Path]) -> list[dict]:
    """One entry per page of the folder, plus failed points of the same experiments with no page."""
    entries = {}
    for page in sorted(out_dir.rglob("*.html")):
        rel = page.relative_to(out_dir)
        if page.parent == out_dir or len(rel.parts) != 3:
            continue
        exp, stage, name = (*rel.parts[:2], rel.stem)
        entries[(exp, stage, name)] = {"experiment": exp, "stage": stage, "name": name, "page": rel.as_posix(),
                                       "meta": read_page_meta(page),
                                       "info": point_info(notebooks_dir / exp / stage / f"{name}.ipynb", roots)}
    experiments = {k[0] for k in entries}
    for marker in sorted(notebooks_dir.glob("*/*/*.failed.json")) if notebooks_dir.is_dir() else []:
        exp, stage, name = marker.parent.parent.name, marker.parent.name, marker.name[:-len(".failed.json")]
        if exp in experiments and (exp, stage, name) not in entries:
            entries[(exp, stage, name)] = {"experiment": exp, "stage": stage, "name": name, "page": None, "meta": {},
                                           "info": point_info(marker.parent / f"{name}.ipynb", roots)}
    return list(entries.values())


def write_index(out_dir: str | os.PathLike, notebooks_dir: str | os.PathLike = "outputs/notebooks",
                roots: list[Path] | None = None) -> Path:
    """`<out_dir>/index.html`: per experiment and stage, every point with its title, grid values,
    dataset, status (failed points marked) and headline ID / OOD numbers."""
    out, notebooks_dir = Path(out_dir), Path(notebooks_dir)
    entries = index_entries(out, notebooks_dir, roots or report_roots(notebooks_dir))
    failed = [e for e in entries if e["info"]["status"] == "failed"]
    parts = [f"<h1>clipdg reports</h1><p>{len(entries)} point(s) in {len({e['experiment'] for e in entries})} "
             f"experiment(s); <b>{len(failed)} failed</b>. Rendered "
             f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}. Pages open offline ("
             + ("plotly.js from <code>plotly.min.js</code> in this folder" if any(e["meta"].get("mode") == "linked"
                for e in entries) else "plotly.js inline in each page")
             + "); each has a show / hide code button and its provenance.</p>"]
    if failed:
        parts.append("<p>Failed: " + ", ".join(_link(e, f"{e['experiment']}/{e['stage']}/{e['name']}") for e in failed)
                     + "</p>")
    for exp in sorted({e["experiment"] for e in entries}):
        parts.append(f"<h2>Experiment <code>{html.escape(exp)}</code></h2>")
        stages = {}
        for e in entries:
            if e["experiment"] == exp:
                stages.setdefault(e["stage"], []).append(e)
        for stage, group in sorted(stages.items(), key=lambda kv: (_stage_title(kv[1]) or "~", kv[0])):
            title = _stage_title(group)
            parts.append(f"<h3>{html.escape(stage)}{' &middot; ' + html.escape(title) if title else ''}</h3>")
            rows = "".join(_row(e) for e in group)
            parts.append('<table class="points"><thead><tr><th>point</th><th>dataset</th><th>status</th>'
                         f"<th>headline: {SPLIT_TITLES[ID_SPLIT]} / {SPLIT_TITLES[OOD_SPLIT]}</th></tr></thead>"
                         f"<tbody>{rows}</tbody></table>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>clipdg reports</title>"
            f"{_INDEX_CSS}</head><body>{''.join(parts)}</body></html>")
    target = out / "index.html"
    write_bytes(target, page.encode("utf-8"))
    return target


def _stage_title(group: list[dict]) -> str:
    return next((e["meta"].get("notebook_title") for e in group if e["meta"].get("notebook_title")), "")


def _link(entry: dict, text: str) -> str:
    if entry["page"] is None:
        return f'{html.escape(text)} <span class="muted">(no report: the notebook is missing or unreadable)</span>'
    return f'<a href="{html.escape(entry["page"])}">{html.escape(text)}</a>'


def _row(e: dict) -> str:
    info = e["info"]
    text = e["meta"].get("grid") or grid_values(e["name"], info["parameters"]) or e["name"]
    datasets = _distinct([info["parameters"].get("dataset")] + [r.get("dataset") for r in info["records"]])
    cls = ' class="failed"' if info["status"] == "failed" else ""
    return (f"<tr{cls}><td>{_link(e, text)}</td><td>{html.escape(', '.join(datasets)) or '&mdash;'}</td>"
            f"<td>{status_html(info)}</td><td>{_headline_cell(headline_rows(info['records']))}</td></tr>")
