"""The package's public API: every name resolves to its module's object; importing the package is light."""
from __future__ import annotations

import importlib
import subprocess
import sys

import clipdg_nb


def test_every_public_name_is_its_modules_object():
    for name, module in clipdg_nb._PUBLIC.items():
        assert getattr(clipdg_nb, name) is getattr(importlib.import_module(f"clipdg_nb.{module}"), name), name
    assert set(clipdg_nb.__all__) <= set(dir(clipdg_nb))


def test_importing_the_package_imports_no_torch():
    code = "import sys, clipdg_nb; print('torch' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
