"""Other libraries through their public interfaces only: the package reads, calls, overrides or
patches none of another package's private names (one leading underscore), so a new jupyter_client,
ipykernel or Python cannot break it by changing what they never promised.

Found with `ast` over clipdg_nb/: a private name imported from another package; an attribute
`x._name` (or `getattr(x, "_name")`) where `_name` is defined nowhere in the package; a private
method of a class that derives from another package's class (an override); an assignment to an
attribute of an imported module (`gc.collect = ...`, a patch)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "clipdg_nb"
# Documented public API despite the underscore (os._exit: the Python docs' way to end a forked child;
# namedtuple's methods are underscored only to stay clear of field names).
DOCUMENTED = {"_exit", "_asdict", "_replace", "_fields", "_make"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in DOCUMENTED


def _trees() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _own(trees) -> tuple[set[str], set[str]]:
    """Private names the package defines (functions, classes, attributes it assigns, parameters,
    module globals) and the classes it defines."""
    names, classes = set(), set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.ClassDef):
                names.add(node.name)
                classes.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return {n for n in names if _private(n)}, classes


def foreign_private_uses(trees=None) -> list[str]:
    trees = _trees() if trees is None else trees
    own, own_classes = _own(trees)
    found = []
    for path, tree in trees.items():
        where = path.relative_to(PACKAGE.parent)
        foreign_modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                foreign_modules.update((a.asname or a.name).split(".")[0] for a in node.names
                                       if not a.name.startswith("clipdg_nb"))
            elif isinstance(node, ast.ImportFrom) and not node.level and not (node.module or "").startswith("clipdg_nb"):
                found += [f"{where}:{node.lineno} from {node.module} import {a.name}" for a in node.names
                          if _private(a.name)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                if _private(node.attr) and node.attr not in own:
                    found.append(f"{where}:{node.lineno} .{node.attr}")
                elif isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) \
                        and node.value.id in foreign_modules:
                    found.append(f"{where}:{node.lineno} {node.value.id}.{node.attr} = ... (a patch)")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) \
                    and _private(node.args[1].value) and node.args[1].value not in own:
                found.append(f"{where}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
            elif isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b).split(".")[-1] for b in node.bases]
                if any(b not in own_classes and b != "object" for b in bases):
                    found += [f"{where}:{f.lineno} {node.name}.{f.name} overrides a private member of {', '.join(bases)}"
                              for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                              and _private(f.name)]
    return found


def test_the_package_uses_no_private_name_of_another_package():
    found = foreign_private_uses()
    assert not found, "private names of other packages used:\n" + "\n".join(found)


def test_the_scan_finds_each_kind_of_use():
    code = '''
import gc, atexit
from jupyter_client.manager import AsyncKernelManager, _private_helper
class Mine(AsyncKernelManager):
    async def _async_launch_kernel(self): ...
def f(pool):
    atexit._run_exitfuncs()
    gc.collect = lambda: 0
    return getattr(pool, "_broken", False)
'''
    found = foreign_private_uses({PACKAGE / "probe.py": ast.parse(code)})
    assert sorted(f.split(" ", 1)[1] for f in found) == sorted([
        "from jupyter_client.manager import _private_helper",
        "Mine._async_launch_kernel overrides a private member of AsyncKernelManager",
        "._run_exitfuncs", "gc.collect = ... (a patch)", "getattr(..., '_broken')"]), found
