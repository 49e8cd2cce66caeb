"""What a report says about its points, and the site around them.

A point's facts come from the runner's markers (`<point>.done.json`, `<point>.failed.json`) and the
run records they list. `write_index` writes the site: `index.html` (`report_summary`),
`stages.html`, a page per stage, `downloads.html`, `docs.html`, `search-index.js` and
`clipdg-vendor.js`. All HTML is in templates/ (Jinja2, autoescaped); Python hands them data.
"""
from __future__ import annotations

import datetime as _dt
import functools
import html
import json
import os
import re
from pathlib import Path

from ..data import DATASETS, SPLIT_TITLES, headline_metric
from ..paths import project_root
from ..runs import Run, load_records
from ..paths import experiment_dir, read_json, write_bytes
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


def _record(run_dir: str, roots: list[Path]) -> tuple[dict, Path] | None:
    d = Path(run_dir)
    for folder in [d] if d.is_absolute() else [r / d for r in roots]:
        record = Run(folder).record()
        if record is not None:
            return record, folder.resolve()
    return None


def point_info(notebook: str | os.PathLike, roots: list[Path]) -> dict:
    """status (done | failed | unknown), failure (the failed marker), parameters (as given),
    records (the run records its done marker lists that exist), folders (theirs, resolved),
    missing (the others: gone, or superseded)."""
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
    records, folders, missing = [], [], []
    for d in (done or {}).get("run_dirs", []) if status == "done" else []:
        found = _record(d, roots)
        if found is None or Run(found[1]).superseded():  # a newer run of its point replaced it
            missing.append(d)
        else:
            records.append(found[0])
            folders.append(found[1])
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
            "folders": folders, "missing": missing, "parameters": parameters, "read": read, "read_from": read_from}


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
# Templates: every page's HTML lives in templates/*.html.j2; Python hands them data
# ---------------------------------------------------------------------------------------------

TEMPLATES = Path(__file__).with_name("templates")
SEARCH_INDEX = "search-index.js"
SEARCH_TEXT = 20_000  # characters of a page's text in the search index (the demo's analysis page: ~13k)
VENDOR = "clipdg-vendor.js"  # the libraries of templates/vendor/, one file per report folder
TITLES = {"id": SPLIT_TITLES[ID_SPLIT], "ood": SPLIT_TITLES[OOD_SPLIT]}


@functools.lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment of the report templates (autoescaped: text from records is never HTML)."""
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, trim_blocks=True,
                              lstrip_blocks=True, undefined=jinja2.StrictUndefined)


@functools.lru_cache(maxsize=1)
def assets() -> dict:
    """The CSS and the search script every page carries inline (a few kB; no file to go stale)."""
    from markupsafe import Markup

    return {name.replace(".", "_").replace("site_", ""): Markup((TEMPLATES / name).read_text(encoding="utf-8"))
            for name in ("site.css", "site.js", "notebook.css")}


def plotlyjs() -> str:
    """The installed plotly.js itself (~4.8 MB): written once per report folder, or inline."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def write_plotlyjs(out_dir: str | os.PathLike) -> Path:
    """`<out_dir>/plotly.min.js`, the installed plotly.js (rewritten only when its size differs)."""
    target, js = Path(out_dir) / PLOTLYJS_FILE, plotlyjs().encode("utf-8")
    if not (target.is_file() and target.stat().st_size == len(js)):
        write_bytes(target, js)
    return target


def write_vendor(out_dir: str | os.PathLike) -> Path:
    """`<out_dir>/clipdg-vendor.js`: the JavaScript libraries every page uses (templates/vendor/*.js:
    table sorting, full-text search, page contents; their names, versions and licences in their
    headers), rewritten only when it differs."""
    js = "\n".join(p.read_text(encoding="utf-8") for p in sorted((TEMPLATES / "vendor").glob("*.js"))).encode("utf-8")
    target = Path(out_dir) / VENDOR
    if not (target.is_file() and target.read_bytes() == js):
        write_bytes(target, js)
    return target


def render(template: str, **context) -> str:
    return environment().get_template(template).render(assets=assets(), **context)


_DOC_LINK = re.compile(r"\]\((?:\.\./|docs/)?([\w-]+)\.md(?:#[\w-]*)?\)")


def docs_sections(root: str | os.PathLike | None = None) -> list[dict]:
    """README.md and docs/*.md as the sections of `docs.html` (mistune, nbconvert's markdown renderer;
    a link to another of them becomes a link to its section)."""
    import mistune
    from markupsafe import Markup

    from .readme import documents

    sections = []
    for path in documents(project_root(root)):
        if path.is_file():
            text = _DOC_LINK.sub(lambda m: f"](#doc-{m[1].lower()})", path.read_text(encoding="utf-8"))
            body = mistune.html(text).replace("<table>", '<table class="clipdg-table">')
            sections.append({"id": f"doc-{path.stem.lower()}", "title": path.stem, "html": Markup(body)})
    return sections


# ---------------------------------------------------------------------------------------------
# HTML pieces of a notebook page
# ---------------------------------------------------------------------------------------------

def _distinct(values) -> list[str]:
    return list(dict.fromkeys(_fmt(v) for v in values if v not in (None, "", [])))


def provenance_rows(info: dict, nb=None) -> tuple[list[dict], str]:
    """Rows and a one-line summary of a page's provenance: versions, git commit, data root, weights
    (from the run records the point wrote, else those it read), the parameters as given, the run
    records and when it ran."""
    recs = info["records"] or info.get("read") or []
    versions: dict[str, list] = {}
    for rec in recs:
        for k, v in (rec.get("versions") or {}).items():
            versions.setdefault(k, []).append(v)
    version_text = [f"{k} {' / '.join(_distinct(v))}" for k, v in versions.items() if _distinct(v)]
    commits = _distinct(r.get("git_commit") for r in recs)
    data = _distinct(r.get("root_dir") or (r.get("params") or {}).get("root_dir") for r in recs)
    hardware = _distinct(" / ".join(filter(None, [h.get("gpu"), h.get("cpu")])) for h in
                         ((r.get("hardware") or {}) for r in recs))
    rows = [("library versions", version_text), ("git commit", commits), ("hardware", hardware), ("data root", data)]
    rows += [(key, _distinct((r.get("params") or {}).get(key) for r in recs)) for key in _WEIGHTS]
    out = [{"label": k, "items": [(v, "") for v in values]} for k, values in rows if values]
    given = info["parameters"] or ((nb.metadata.get("papermill") or {}).get("parameters") if nb is not None else {}) or {}
    out.append({"label": "parameters as given", "lines": True,
                "items": [(f"{k} = {json.dumps(v)}", "") for k, v in given.items()]})
    items = [(str(r.get("run_id")), f"({r.get('created_at', '')})") for r in info["records"]]
    items += [(str(d), "missing or superseded") for d in info["missing"]]
    if not info["records"] and info.get("read"):
        items.append(("", f"none written; it read {len(info['read'])} run record(s) under {info['read_from']} "
                          "(the rows above are theirs)"))
    out.append({"label": "run records", "lines": True, "items": items,
                "text": "none listed (this notebook writes none, or it has no done marker)"})
    pm = (nb.metadata.get("papermill") or {}) if nb is not None else {}
    if pm.get("end_time"):
        kernel = (nb.metadata.get("language_info") or {}).get("version")
        out.append({"label": "executed", "items": [("", f"{pm.get('start_time')} .. {pm.get('end_time')} "
                                                        f"({pm.get('duration') or 0:.0f} s), papermill {pm.get('version')}"
                                                        + (f", Python {kernel}" if kernel else ""))]})
    n = f"{len(info['records'])} run record(s)" if info["records"] or not info.get("read") else \
        f"{len(info['read'])} run record(s) read"
    summary = [n] + [f"git {c[:10]}" for c in commits[:2]]
    summary += [v for v in version_text if v.split()[0] in ("torch", "open_clip")] + [f"data {d}" for d in data[:1]]
    return out, " · ".join(summary)


def notebook_parts(info: dict, nb, meta: dict, root: str, title: str, crumbs: list, prev: str | None = None,
                   next_: str | None = None, plotly_src: str | None = None, plotly_inline: str | None = None) -> dict:
    """The head, top (navigation, status, code button, provenance) and bottom (search) of a notebook page."""
    from markupsafe import Markup  # HTML made here (the meta tag, plotly.js) goes in as it is

    rows, summary = provenance_rows(info, nb)
    context = dict(info=info, meta=Markup(page_meta(meta)), root=root, title=title, crumbs=crumbs, prev=prev, next=next_,
                   plotly_src=plotly_src, plotly_inline=Markup(plotly_inline) if plotly_inline else None, provenance_rows=rows,
                   provenance_summary=summary)
    return {part: render("notebook_parts.html.j2", part=part, **context) for part in ("head", "top", "bottom")}


# ---------------------------------------------------------------------------------------------
# The site: summary (index.html), stages, a page per stage, downloads, the search index
# ---------------------------------------------------------------------------------------------

def stale_failed_pages(out_dir: str | os.PathLike, notebooks_dir: str | os.PathLike, experiment: str | None = None,
                       stage: str | None = None) -> list[Path]:
    """Pages of failed executions (`<point>.failed.html`) whose failed notebook is gone: the point
    has succeeded since (a success removes its failure files), so the page shows a failure that no
    longer holds."""
    out, notebooks_dir = Path(out_dir), Path(notebooks_dir)
    return [page for page in sorted(out.glob(f"{experiment or '*'}/{stage or '*'}/*.failed.html"))
            if not (notebooks_dir / page.relative_to(out).with_suffix(".ipynb")).is_file()]


def index_entries(out_dir: Path, notebooks_dir: Path, roots: list[Path]) -> list[dict]:
    """One entry per point page of the folder (less stale failure pages), plus failed points of the
    same experiments with no page."""
    entries, stale = {}, set(stale_failed_pages(out_dir, notebooks_dir))
    for page in sorted(out_dir.rglob("*.html")):
        rel = page.relative_to(out_dir)
        if (page.parent == out_dir or len(rel.parts) != 3 or rel.name == "index.html"  # index: the stage's page
                or page in stale):
            continue
        exp, stage, name = (*rel.parts[:2], rel.stem)
        entries[(exp, stage, name)] = {"experiment": exp, "stage": stage, "name": name, "page": rel.as_posix(),
                                       "meta": read_page_meta(page),
                                       "info": point_info(notebooks_dir / exp / stage / f"{name}.ipynb", roots)}
    experiments = {k[0] for k in entries}
    for marker in sorted(notebooks_dir.glob("*/*/*.failed.json")) if notebooks_dir.is_dir() else []:
        exp, stage, name = marker.parent.parent.name, marker.parent.name, marker.name[:-len(".failed.json")]
        # a failed point counts once: the runner keeps a failed execution as <name>.failed.ipynb, its page is this point's
        if exp in experiments and (exp, stage, name) not in entries and (exp, stage, f"{name}.failed") not in entries:
            entries[(exp, stage, name)] = {"experiment": exp, "stage": stage, "name": name, "page": None, "meta": {},
                                           "info": point_info(marker.parent / f"{name}.ipynb", roots)}
    return list(entries.values())


def _stage_title(group: list[dict]) -> str:
    return next((e["meta"].get("notebook_title") for e in group if e["meta"].get("notebook_title")), "")


def _point_text(e: dict) -> str:
    return e["meta"].get("grid") or grid_values(e["name"], e["info"]["parameters"]) or e["name"]


def _point_row(e: dict, local: bool = False) -> dict:
    """A point as a table row; `local`: linked from its stage's page (beside it), else from the report root."""
    info = e["info"]
    datasets = _distinct([info["parameters"].get("dataset")] + [r.get("dataset") for r in info["records"]])
    return {"text": _point_text(e), "href": (e["page"].rsplit("/", 1)[-1] if local else e["page"]) if e["page"] else None, "info": info,
            "status": info["status"], "datasets": ", ".join(datasets), "headline": headline_rows(info["records"]),
            "path": f"{e['experiment']}/{e['stage']}/{e['name']}"}


def _lr_label(lr) -> str:
    return f"{lr:g}" if isinstance(lr, (int, float)) and lr == lr and lr >= 0 else ""


def _ci(mean, low, high) -> str:
    if mean != mean:  # NaN: no value
        return "—"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]" if low == low and high == high else f"{mean:.3f} (1 seed)"


def stage_groups(group: list[dict], level: float = 0.95) -> list[dict]:
    """A stage's runs by dataset, method and fraction (and weight variant, lr): each dataset's ID and
    OOD headline metric, mean [interval] over seeds, and links to the points that ran them."""
    from ..analysis.tables import headline_table
    from ..runs import is_run_record, tidy

    records = [r for e in group for r in e["info"]["records"] if is_run_record(r)]
    if not records:
        return []
    pages = {}
    for e in group:
        for r in filter(is_run_record, e["info"]["records"]):
            key = (r.get("dataset"), r.get("method"), _fmt(r.get("fraction")), _lr_label(r.get("lr")))
            if e["page"]:
                pages.setdefault(key, {})[f"s{r.get('seed')}"] = e["page"].rsplit("/", 1)[-1]
    rows = tidy(records)
    rows = rows[rows["split"].isin([ID_SPLIT, OOD_SPLIT])]  # only what the table shows: far fewer rows to group
    wanted = [headline_metric(d, s) for d, s in zip(rows["dataset"], rows["split"], strict=True)]
    rows = rows[rows["metric"] == wanted]
    table = headline_table(rows, ID_SPLIT, OOD_SPLIT, level)
    heads = {(r.get("method"), (r.get("selection") or {}).get("variant")) for r in records}  # the reported weights
    out = []
    for dataset, part in table.groupby("dataset", sort=True):
        cells = {}
        for r in part.itertuples(index=False):
            key = (r.method, _fmt(r.fraction), r.variant, _lr_label(r.lr))
            row = cells.setdefault(key, {"method": r.method, "fraction": _fmt(r.fraction), "lr": _lr_label(r.lr),
                                        "variant": r.variant + (" (reported)" if (r.method, r.variant) in heads else ""),
                                        "id": "—", "ood": "—", "n": 0,
                                        "points": sorted(pages.get((dataset, r.method, _fmt(r.fraction),
                                                                    _lr_label(r.lr)), {}).items())})
            row["id" if r.split == ID_SPLIT else "ood"] = _ci(r.mean, r.low, r.high)
            row["n"] = max(row["n"], int(r.n))
        order = sorted(cells, key=lambda k: (k[0] != "zeroshot", k[0], float(k[1]) if k[1] else 0.0,
                                             (k[0], k[2]) not in heads, k[2], k[3]))
        out.append({"dataset": dataset, "id_metric": headline_metric(dataset, ID_SPLIT),
                    "ood_metric": headline_metric(dataset, OOD_SPLIT), "rows": [cells[k] for k in order]})
    return out


def _search_entry(title: str, url: str, kind: str, *words) -> dict:
    return {"title": title, "url": url, "kind": kind, "text": " ".join(str(w) for w in words if w not in (None, ""))}


def notebook_text(path: Path, limit: int = SEARCH_TEXT) -> str:
    """The words a reader sees in an executed notebook: markdown, text outputs and the plain form of
    tables and figures (no code, no images), whitespace collapsed, at most `limit` characters."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    parts = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            parts.append("".join(cell.get("source", "")))
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "") or (out.get("data") or {}).get("text/plain", "")))
    return " ".join(" ".join(parts).split())[:limit]


def _point_search(e: dict, notebooks_dir: Path) -> dict:
    info, meta = e["info"], e["meta"]
    params = " ".join(f"{k}={_fmt(v)}" for k, v in info["parameters"].items())
    title = " · ".join(filter(None, [meta.get("notebook_title") or e["stage"], _point_text(e)]))
    runs = " ".join(str(r.get("run_id")) for r in info["records"])
    text = notebook_text(notebooks_dir / e["experiment"] / e["stage"] / f"{e['name']}.ipynb")
    return _search_entry(title, e["page"], "point", f"{e['experiment']} / {e['stage']}", info["status"], params, runs, text)


def _relative(folder: Path, roots: list[Path]) -> str:
    """A run folder as the downloads name it: relative to the first root holding it, else absolute."""
    for root in roots:
        if folder.is_relative_to(root):
            return folder.relative_to(root).as_posix()
    return folder.as_posix()


def _description(experiment: str, roots: list[Path]) -> str:
    """The experiment file's `description` (parameters/<experiment>.yaml under a root), or ''."""
    import yaml

    for root in roots:
        path = root / "parameters" / f"{experiment}.yaml"
        if path.is_file():
            try:
                found = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, OSError, UnicodeDecodeError):
                return ""
            return str(found.get("description") or "") if isinstance(found, dict) else ""
    return ""


def write_index(out_dir: str | os.PathLike, notebooks_dir: str | os.PathLike = "outputs/notebooks",
                roots: list[Path] | None = None, level: float = 0.95, self_contained: bool = False) -> Path:
    """The site around the point pages of `out_dir`: `index.html` (the summary: per experiment and
    dataset the findings with verdicts, the key figures with captions, a banner when the data is
    synthetic or the model tiny, provenance), `stages.html`, `<experiment>/<stage>/index.html`
    (the stage's runs by dataset, method and fraction, and its points), `downloads.html` with
    the runs, metrics, calibration and findings tables, and the search index. `self_contained`: plotly.js inline
    in the summary (else loaded from plotly.min.js beside it). Returns the summary's path."""
    from .report_summary import (LEVEL, SELECT_SPLIT, TOPICS, experiment_summaries, findings_frame, write_downloads)

    from markupsafe import Markup

    out, notebooks_dir = Path(out_dir), Path(notebooks_dir)
    roots = roots or report_roots(notebooks_dir)
    entries = index_entries(out, notebooks_dir, roots)
    rendered = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    by_exp: dict[str, dict[str, list]] = {}
    for e in entries:
        by_exp.setdefault(e["experiment"], {}).setdefault(e["stage"], []).append(e)
    stages, search, summaries, all_pairs = {}, [], {}, []
    for exp, exp_stages in sorted(by_exp.items()):
        stages[exp] = []
        for stage, group in sorted(exp_stages.items(), key=lambda kv: (_stage_title(kv[1]) or "~", kv[0])):
            title, href = _stage_title(group), f"{exp}/{stage}/index.html"
            failed = sum(e["info"]["status"] == "failed" for e in group)
            datasets = _distinct(e["info"]["parameters"].get("dataset") for e in group)
            stages[exp].append({"name": stage, "title": title, "href": href, "n": len(group), "failed": failed,
                                "datasets": datasets})
            page = render("stage.html.j2", page_title=f"{exp} / {stage}", meta="", root="../../", here="stages",
                          crumbs=[(exp, None), (stage, None)], stage=stage, title=title, experiment=exp,
                          entries=[_point_row(e, local=True) for e in group], n_failed=failed, titles=TITLES,
                          groups=stage_groups(group, level), level=f"{level:.0%}")
            write_bytes(out / href, page.encode("utf-8"))
            search.append(_search_entry(f"{exp} / {stage}" + (f" · {title}" if title else ""), href, "stage",
                                        f"{len(group)} points", ", ".join(datasets)))
            search += [_point_search(e, notebooks_dir) for e in group if e["page"]]
        pairs = [(r, f) for e in entries if e["experiment"] == exp
                 for r, f in zip(e["info"]["records"], e["info"]["folders"], strict=True)]
        all_pairs += pairs
        if pairs:
            summaries[exp] = experiment_summaries(pairs)
    downloads = write_downloads(out, [r for r, _ in all_pairs], [_relative(f, roots) for _, f in all_pairs],
                                findings_frame(summaries))
    experiments = []
    for exp, summary in summaries.items():
        kind = summary["kind"]
        banner = ", ".join(filter(None, ["synthetic data" if kind["synthetic"] else "",
                                         "tiny model" if kind["tiny"] else ""]))
        datasets = [{"dataset": d.dataset, "error": d.error, "counts": d.counts, "figures": d.figures,
                     "fractions": ", ".join(f"{f:g}" for f in d.counts.get("fractions", [])),
                     "topics": [{"name": t, "lead": lead, "rows": d.findings[d.findings["topic"] == t].to_dict("records")}
                                for t, lead in TOPICS.items() if not d.findings.empty]}
                    for d in summary["datasets"]]
        experiments.append({"name": exp, "kind": kind, "banner": f"{banner[0].upper()}{banner[1:]}: not the paper's "
                            "numbers." if banner else "", "datasets": datasets, "stages": stages[exp],
                            "provenance": summary["provenance"], "n_runs": summary["n_runs"],
                            "n_side": summary["n_side"], "description": _description(exp, roots), "select_split": SPLIT_TITLES[SELECT_SPLIT],
                            "level": f"{LEVEL:.0%}"})
        search.append(_search_entry(f"{exp}: summary", f"index.html#experiment-{exp}", "summary",
                                    " ".join(d["dataset"] for d in datasets), "findings key figures provenance",
                                    *(f"{t['name']}: {t['lead']}" for t in datasets[0]["topics"]) if datasets else (),
                                    *(f"{d['dataset']}: {f['question']}: {f['measured']} {f['verdict']}."
                                      for d in datasets for t in d["topics"] for f in t["rows"]),
                                    *(f"{fig.title}. {fig.caption}" for d in summary["datasets"] for fig in d.figures)))
    has_figures = any(f.html for x in summaries.values() for d in x["datasets"] for f in d.figures)
    failed = [_point_row(e) for e in entries if e["info"]["status"] == "failed"]
    dl = list(downloads.values())
    pages = {
        "index.html": render("summary.html.j2", page_title="summary", meta="", root="", here="summary",
                             experiments=experiments, failed=failed, downloads=dl, rendered=rendered,
                             plotly_src=PLOTLYJS_FILE if has_figures and not self_contained else None,
                             plotly_inline=Markup(plotlyjs()) if has_figures and self_contained else None),
        "stages.html": render("stages.html.j2", page_title="stages", meta="", root="", here="stages",
                              experiments=[{"name": k, "stages": v} for k, v in stages.items()],
                              n_points=len(entries), n_failed=len(failed),
                              plotly_mode="plotly.js from plotly.min.js in this folder" if any(
                                  e["meta"].get("mode") == "linked" for e in entries) else "plotly.js inline in each page"),
        "downloads.html": render("downloads.html.j2", page_title="downloads", meta="", root="", here="downloads",
                                 downloads=dl),
        "docs.html": render("docs.html.j2", page_title="docs", meta="", root="", here="docs", docs=(docs := docs_sections())),
    }
    search += [_search_entry("Stages", "stages.html", "page", "every experiment and stage"),
               _search_entry("Downloads", "downloads.html", "page", *(f"{f} {d['what']}: {', '.join(d['column_names'])}"
                                                                      for d in dl for f in d["files"])),
               _search_entry("Docs", "docs.html", "page",
                             re.sub(r"<[^>]+>|\s+", " ", " ".join(str(d["html"]) for d in docs))[:SEARCH_TEXT])]
    if has_figures and not self_contained:
        write_plotlyjs(out)
    write_vendor(out)
    write_bytes(out / SEARCH_INDEX, ("window.CLIPDG_SEARCH = " + json.dumps(search, ensure_ascii=False, indent=0)
                                     + ";\n").encode("utf-8"))
    for name, page in pages.items():
        write_bytes(out / name, page.encode("utf-8"))
    return out / "index.html"
