"""Prompt templates: data shipped with the package (`data_files/templates.json`, one entry per
dataset with a `paper` and an `ensemble` set), rendered for a class name."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

TEMPLATE_SETS = ("paper", "ensemble")  # paper: the study's single prompt; ensemble: CLIP's published set
TEMPLATES_FILE = Path(__file__).resolve().parent.parent / "data_files" / "templates.json"


def prompt_templates(name: str, kind: str = "paper") -> list[str]:
    """Templates with `{c}` for the class name (and `{article}`, 'a' or 'an'). (`data.prompt_templates`
    checks the dataset name against the registry first.)"""
    if kind not in TEMPLATE_SETS:
        raise ValueError(f"templates={kind!r} is unknown; choose one of {list(TEMPLATE_SETS)}")
    with TEMPLATES_FILE.open() as fh:
        table = json.load(fh)
    if name not in table:
        raise ValueError(f"{TEMPLATES_FILE} has no templates for dataset {name!r}: add a '{name}' entry with "
                         f"the sets {list(TEMPLATE_SETS)}")
    return list(table[name][kind])


def render_prompt(template: str, classname: str) -> str:
    """One prompt: `{c}` (or open_clip's positional `{}`) is the class name, `{article}` 'a' / 'an'."""
    article = "an" if classname[:1].lower() in "aeiou" else "a"
    return template.format(classname, c=classname, article=article)


def prompt_functions(templates: Sequence[str]) -> list:
    """open_clip-style callables (what `build_zero_shot_classifier` takes) for string templates."""
    return [lambda c, t=t: render_prompt(t, c) for t in templates]
