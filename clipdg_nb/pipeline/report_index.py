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

from markupsafe import Markup

from ..analysis.summary import (CLIP_METHOD, ID_SPLIT, LEVEL, OOD_SPLIT, SELECT_SPLIT, SOUP_STAGE, VISION_METHOD, distinct,
                                findings_frame, provenance)
from ..analysis.tables import ci_text, lr_text
from ..data import SPLIT_TITLES, headline_metric
from ..paths import experiment_dir, project_root, read_json, write_bytes
from ..runs import Run, is_run_record, load_records, tidy
from .experiment import point_name
from .report_summary import experiment_summaries, write_downloads

PLOTLYJS_FILE = "plotly.min.js"
TEMPLATES = Path(__file__).with_name("templates")
SEARCH_TEXT = 20_000  # characters of a page's text in the search index (the demo's analysis page: ~13k)
TITLES = {"id": SPLIT_TITLES[ID_SPLIT], "ood": SPLIT_TITLES[OOD_SPLIT]}
# nbconvert rewrites a page's head: the meta tag's attributes may come in any order, in either quotes
_META = re.compile(r"""<meta\b[^>]*\bname=["']clipdg-report["'][^>]*>""")
_CONTENT = re.compile(r"""\bcontent=(["'])(.*?)\1""", re.DOTALL)


def report_roots(notebooks_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """Folders a done marker's (relative) run folders may be relative to: `root` if given, the folder
    holding `outputs/notebooks`, the project root."""
    found = [Path(root).resolve()] if root is not None else []
    return list(dict.fromkeys(found + [Path(notebooks_dir).resolve().parent.parent, project_root()]))


def point_info(notebook: str | os.PathLike, roots: list[Path]) -> dict:
    """status (done | failed | unknown), failure (the failed marker), parameters (as given),
    records (the run records its done marker lists that exist), folders (theirs, resolved),
    missing (the others: gone, or superseded); read, read_from: the runs a notebook that writes
    none reads (04_analysis)."""
    notebook = Path(notebook)
    if notebook.name.endswith(".failed.ipynb"):  # the runner keeps a failed execution beside the point's
        notebook = notebook.with_name(notebook.name[:-len(".failed.ipynb")] + ".ipynb")
        done_path = notebook.with_suffix(".no-done-marker")  # this page shows the failure, not the success
    else:
        done_path = notebook.with_suffix(".done.json")
    failed_path = notebook.with_suffix(".failed.json")
    done, failed = (m if isinstance(m, dict) else None for m in (read_json(done_path), read_json(failed_path)))
    if failed and (not done or failed_path.stat().st_mtime >= done_path.stat().st_mtime):
        status = "failed"
    else:
        status = "done" if done else "unknown"
    records, folders, missing = [], [], []
    for d in (done or {}).get("run_dirs", []) if status == "done" else []:
        folders_tried = [Path(d)] if Path(d).is_absolute() else [r / d for r in roots]
        found = next(((f, rec) for f in folders_tried if (rec := Run(f).record()) is not None), None)
        if found is None or Run(found[0]).superseded():  # a newer run of its point replaced it
            missing.append(d)
        else:
            records.append(found[1])
            folders.append(found[0].resolve())
    parameters = ((done if status == "done" else failed) or {}).get("parameters") or {}
    read, read_from = [], None
    if status == "done" and not done.get("run_dirs") and parameters.get("experiment") and parameters.get("output_dir"):
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
    found = sorted((f"_{name}_".find(f"_{point_name({k: v})}_"), k, v) for k, v in parameters.items())
    found = [f for f in found if f[0] >= 0]
    if not found:
        return "" if name == "default" else name
    return ", ".join(f"{k}={_fmt(v)}" for _, k, v in found)


def notebook_title(nb) -> str | None:
    """The first markdown heading of a notebook."""
    for cell in nb.cells:
        for line in cell.source.splitlines() if cell.cell_type == "markdown" else []:
            if line.startswith("#"):
                return line.lstrip("#").strip().replace("`", "")
    return None


def read_page_meta(page: Path) -> dict:
    """The page's own facts (mode, code, neighbours, notebook title, grid values) from the meta tag
    `notebook_parts` writes in its head; {} if absent."""
    with open(page, encoding="utf-8", errors="replace") as fh:
        tag = _META.search(fh.read(8192))
    content = _CONTENT.search(tag.group(0)) if tag else None
    try:
        return json.loads(html.unescape(content.group(2))) if content else {}
    except ValueError:
        return {}


@functools.lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment of the report templates (autoescaped: text from records is never HTML)."""
    import jinja2
    from plotly.offline import get_plotlyjs

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.globals.update(plotlyjs=get_plotlyjs, plotlyjs_file=PLOTLYJS_FILE, titles=TITLES, level=f"{LEVEL:.0%}",
                       select_split=SPLIT_TITLES[SELECT_SPLIT], soup_stage=SOUP_STAGE, clip_method=CLIP_METHOD,
                       vision_method=VISION_METHOD)
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def _write_changed(target: Path, data: bytes) -> Path:
    if not (target.is_file() and target.read_bytes() == data):  # a rerun leaves an unchanged file alone
        write_bytes(target, data)
    return target


def write_plotlyjs(out_dir: str | os.PathLike) -> Path:
    """The installed plotly.js itself (~4.8 MB), once per report folder (else inline in a page)."""
    from plotly.offline import get_plotlyjs

    return _write_changed(Path(out_dir) / PLOTLYJS_FILE, get_plotlyjs().encode("utf-8"))


def page_text(page: str, limit: int | None = SEARCH_TEXT) -> str:
    """The words a reader sees on a rendered page (scripts and styles out), for the search index."""
    return Markup(re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)).striptags()[:limit]


_DOC_LINK = re.compile(r"\]\((?:\.\./|docs/)?([\w-]+)\.md(?:#[\w-]*)?\)")


def docs_sections(root: str | os.PathLike | None = None) -> list[dict]:
    """README.md and docs/*.md as the sections of `docs.html` (mistune, nbconvert's markdown renderer;
    a link to another of them becomes a link to its section)."""
    import mistune

    base = project_root(root)
    sections = []
    for path in (p for p in [base / "README.md", *sorted((base / "docs").glob("*.md"))] if p.is_file()):
        text = _DOC_LINK.sub(lambda m: f"](#doc-{m[1].lower()})", path.read_text(encoding="utf-8"))
        body = mistune.html(text).replace("<table>", '<table class="clipdg-table">')
        sections.append({"id": f"doc-{path.stem.lower()}", "title": path.stem, "html": Markup(body)})
    return sections


def notebook_parts(info: dict, nb, meta: dict, **context) -> dict:
    """The head (meta tag, CSS, plotly.js), top (navigation, status, code button, provenance) and
    bottom (search) of a notebook page; `context`: root, title, crumbs, prev, next, plotly."""
    context.update(info=info, meta=json.dumps(meta), provenance=provenance(info["records"] or info["read"]),
                   papermill=nb.metadata.get("papermill") or {}, python=(nb.metadata.get("language_info") or {}).get("version"))
    return {part: render("notebook_parts.html.j2", part=part, **context) for part in ("head", "top", "bottom")}


def stale_failed_pages(out_dir: str | os.PathLike, notebooks_dir: str | os.PathLike, experiment: str | None = None,
                       stage: str | None = None) -> list[Path]:
    """Pages of failed executions (`<point>.failed.html`) whose failed notebook is gone: the point
    has succeeded since (a success removes its failure files)."""
    out, notebooks_dir = Path(out_dir), Path(notebooks_dir)
    return [page for page in sorted(out.glob(f"{experiment or '*'}/{stage or '*'}/*.failed.html"))
            if not (notebooks_dir / page.relative_to(out).with_suffix(".ipynb")).is_file()]


def index_entries(out_dir: Path, notebooks_dir: Path, roots: list[Path]) -> list[dict]:
    """One entry per point page of the folder (less stale failure pages), plus failed points of the
    same experiments with no page."""
    entries, stale = {}, set(stale_failed_pages(out_dir, notebooks_dir))
    for page in sorted(out_dir.glob("*/*/*.html")):
        if page.name == "index.html" or page in stale:  # index: the stage's page
            continue
        rel = page.relative_to(out_dir)
        exp, stage, name = (*rel.parts[:2], rel.stem)
        entries[(exp, stage, name)] = {"experiment": exp, "stage": stage, "name": name, "page": rel.as_posix(),
                                       "meta": read_page_meta(page),
                                       "info": point_info(notebooks_dir / exp / stage / f"{name}.ipynb", roots)}
    experiments = {k[0] for k in entries}
    for marker in sorted(notebooks_dir.glob("*/*/*.failed.json")):
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
    datasets = distinct([info["parameters"].get("dataset")] + [r.get("dataset") for r in info["records"]])
    return {"text": _point_text(e), "href": (e["page"].rsplit("/", 1)[-1] if local else e["page"]) if e["page"] else None,
            "info": info, "datasets": ", ".join(datasets), "path": f"{e['experiment']}/{e['stage']}/{e['name']}"}


def stage_groups(group: list[dict]) -> list[dict]:
    """A stage's runs by dataset, method and fraction (and weight variant, lr): each dataset's ID and
    OOD headline metric, mean [interval] over seeds, and links to the points that ran them."""
    from ..analysis.tables import headline_table

    records = [r for e in group for r in e["info"]["records"] if is_run_record(r)]
    if not records:
        return []
    pages = {}
    for e in (e for e in group if e["page"]):
        for r in filter(is_run_record, e["info"]["records"]):
            key = (r.get("dataset"), r.get("method"), _fmt(r.get("fraction")), lr_text(r.get("lr")))
            pages.setdefault(key, {})[f"s{r.get('seed')}"] = e["page"].rsplit("/", 1)[-1]
    rows = tidy(records)
    table = headline_table(rows[rows["split"].isin([ID_SPLIT, OOD_SPLIT])], ID_SPLIT, OOD_SPLIT, LEVEL)
    heads = {(r.get("method"), (r.get("selection") or {}).get("variant")) for r in records}  # the reported weights
    out = []
    for dataset, part in table.groupby("dataset", sort=True):
        cells = {}
        for r in part.itertuples(index=False):
            key = (r.method, _fmt(r.fraction), r.variant, lr_text(r.lr))
            row = cells.setdefault(key, {"method": r.method, "fraction": key[1], "lr": key[3], "n": 0, "id": "—", "ood": "—",
                                         "variant": r.variant + (" (reported)" if (r.method, r.variant) in heads else ""),
                                         "points": sorted(pages.get((dataset, *key[:2], key[3]), {}).items())})
            row["id" if r.split == ID_SPLIT else "ood"] = ci_text(r.mean, r.low, r.high, 3, False) or "—"
            row["n"] = max(row["n"], int(r.n))
        order = sorted(cells, key=lambda k: (k[0] != "zeroshot", k[0], float(k[1]) if k[1] else 0.0,
                                             (k[0], k[2]) not in heads, k[2], k[3]))
        out.append({"dataset": dataset, "id_metric": headline_metric(dataset, ID_SPLIT),
                    "ood_metric": headline_metric(dataset, OOD_SPLIT), "rows": [cells[k] for k in order]})
    return out


def _search_entry(title: str, url: str, kind: str, *words) -> dict:
    return {"title": title, "url": url, "kind": kind, "text": " ".join(str(w) for w in words if w not in (None, ""))}


def _point_search(e: dict, out: Path) -> dict:
    info, meta = e["info"], e["meta"]
    title = " · ".join(filter(None, [meta.get("notebook_title") or e["stage"], _point_text(e)]))
    main = re.search(r"<main>(.*)</main>", (out / e["page"]).read_text(encoding="utf-8"), re.S)  # the notebook itself
    return _search_entry(title, e["page"], "point", f"{e['experiment']} / {e['stage']}", info["status"],
                         *(f"{k}={_fmt(v)}" for k, v in info["parameters"].items()),
                         *(r.get("run_id") for r in info["records"]), page_text(main[1]) if main else "")


def _relative(folder: Path, roots: list[Path]) -> str:
    """A run folder as the downloads name it: relative to the first root holding it, else absolute."""
    return next((folder.relative_to(r).as_posix() for r in roots if folder.is_relative_to(r)), folder.as_posix())


def _description(experiment: str, roots: list[Path]) -> str:
    """The experiment file's `description` (parameters/<experiment>.yaml under a root), or ''."""
    import yaml

    path = next((p for r in roots if (p := r / "parameters" / f"{experiment}.yaml").is_file()), None)
    try:
        found = yaml.safe_load(path.read_text(encoding="utf-8")) if path else None
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        found = None
    return str(found.get("description") or "") if isinstance(found, dict) else ""


def write_index(out_dir: str | os.PathLike, notebooks_dir: str | os.PathLike, roots: list[Path],
                self_contained: bool = False) -> Path:
    """The site around the point pages of `out_dir`: `index.html` (the summary: per experiment and
    dataset the findings with verdicts, the key figures, provenance), `stages.html`,
    `<experiment>/<stage>/index.html` (the stage's runs by dataset, method and fraction, and its
    points), `docs.html`, `downloads.html` with its tables, and the search index. `self_contained`:
    plotly.js inline in the summary (else loaded from plotly.min.js beside it). Returns the summary's path."""
    out, notebooks_dir = Path(out_dir), Path(notebooks_dir)
    entries = index_entries(out, notebooks_dir, roots)
    by_exp: dict[str, dict[str, list]] = {}
    for e in entries:
        by_exp.setdefault(e["experiment"], {}).setdefault(e["stage"], []).append(e)
    experiments, search, pairs = [], [], []
    for exp, exp_stages in sorted(by_exp.items()):
        stages = []
        for stage, group in sorted(exp_stages.items(), key=lambda kv: (_stage_title(kv[1]) or "~", kv[0])):
            title, href = _stage_title(group), f"{exp}/{stage}/index.html"
            failed = sum(e["info"]["status"] == "failed" for e in group)
            datasets = distinct(e["info"]["parameters"].get("dataset") for e in group)
            stages.append({"name": stage, "title": title, "href": href, "n": len(group), "failed": failed,
                           "datasets": datasets})
            write_bytes(out / href, render("stage.html.j2", page_title=f"{exp} / {stage}", root="../../", here="stages",
                                           crumbs=[(exp, None), (stage, None)], stage=stage, title=title, experiment=exp,
                                           entries=[_point_row(e, local=True) for e in group], n_failed=failed,
                                           groups=stage_groups(group)).encode())
            search.append(_search_entry(f"{exp} / {stage}" + (f" · {title}" if title else ""), href, "stage",
                                        f"{len(group)} points", ", ".join(datasets)))
            search += [_point_search(e, out) for e in group if e["page"]]
        found = [(r, f) for e in entries if e["experiment"] == exp
                 for r, f in zip(e["info"]["records"], e["info"]["folders"], strict=True)]
        pairs += found
        experiments.append({"name": exp, "stages": stages, "description": _description(exp, roots),
                            **(experiment_summaries(found) if found else {})})
    summaries = {x["name"]: x for x in experiments if "datasets" in x}
    findings = findings_frame({(exp, d.dataset): d.findings for exp, x in summaries.items() for d in x["datasets"]})
    downloads = write_downloads(out, [r for r, _ in pairs], [_relative(f, roots) for _, f in pairs], findings)
    has_figures = any(f.html for x in summaries.values() for d in x["datasets"] for f in d.figures)
    failed = [_point_row(e) for e in entries if e["info"]["status"] == "failed"]
    common = dict(root="", downloads=downloads)
    pages = {
        "index.html": render("summary.html.j2", page_title="summary", here="summary", **common,
                             experiments=list(summaries.values()), failed=failed,
                             rendered=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                             plotly=has_figures and ("inline" if self_contained else "linked")),
        "stages.html": render("stages.html.j2", page_title="stages", here="stages", **common, experiments=experiments,
                              n_points=len(entries), n_failed=len(failed),
                              linked=any(e["meta"].get("mode") == "linked" for e in entries)),
        "downloads.html": render("downloads.html.j2", page_title="downloads", here="downloads", **common),
        "docs.html": render("docs.html.j2", page_title="docs", here="docs", **common, docs=docs_sections()),
    }
    for x in summaries:  # each experiment's section of the summary, as the reader sees it
        section = re.search(rf'<section class="clipdg-experiment" id="experiment-{re.escape(x)}">.*?</section>',
                            pages["index.html"], re.S)
        search.append(_search_entry(f"{x}: summary", f"index.html#experiment-{x}", "summary", page_text(section[0], None)))
    search += [_search_entry(name.title(), f"{name}.html", "page", page_text(pages[f"{name}.html"]))
               for name in ("stages", "downloads", "docs")]
    if has_figures and not self_contained:
        write_plotlyjs(out)
    vendor = "\n".join(p.read_text(encoding="utf-8") for p in sorted((TEMPLATES / "vendor").glob("*.js")))
    _write_changed(out / "clipdg-vendor.js", vendor.encode("utf-8"))  # table sorting, search, page contents
    write_bytes(out / "search-index.js", f"window.CLIPDG_SEARCH = {json.dumps(search, ensure_ascii=False, indent=0)};\n"
                .encode("utf-8"))
    for name, page in pages.items():
        write_bytes(out / name, page.encode("utf-8"))
    return out / "index.html"
