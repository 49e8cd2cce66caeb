"""Prompt templates: data shipped with the package (`data_files/templates.json`, one entry per
dataset with a `paper` and an `ensemble` set, read by `DatasetSpec.templates`), rendered for a class name."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

TEMPLATE_SETS = ("paper", "ensemble")  # paper: the study's single prompt; ensemble: CLIP's published set
TEMPLATES_FILE = Path(__file__).resolve().parent.parent / "data_files" / "templates.json"


def render_prompt(template: str, classname: str) -> str:
    """One prompt: `{c}` (or open_clip's positional `{}`) is the class name, `{article}` 'a' / 'an'."""
    article = "an" if classname[:1].lower() in "aeiou" else "a"
    return template.format(classname, c=classname, article=article)


def prompt_functions(templates: Sequence[str]) -> list:
    """open_clip-style callables (what `build_zero_shot_classifier` takes) for string templates."""
    return [lambda c, t=t: render_prompt(t, c) for t in templates]
