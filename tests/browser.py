"""Real-browser harness: a headless JupyterLab driven by Playwright, and offline checks of HTML pages.

Chromium is Debian's (/usr/bin/chromium, `apt-get install chromium`); Playwright never downloads a
browser here (`playwright install` is not needed, and PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD is set).

Use from a test module:

    from browser import lab_root, lab_server, lab_browser, lab_page, needs_browser  # noqa: F401 (fixtures)
    from browser import run_all_cells, errors_on_page, screenshot

    pytestmark = [pytest.mark.slow, needs_browser]

    def test_my_notebook(lab_page):
        run_all_cells(lab_page, "notebooks/01_zero_shot.ipynb")
        assert errors_on_page(lab_page) == []

`lab_root` (module scope) is a temporary copy of notebooks/, parameters/, pyproject.toml and an empty
outputs/; override it in a test module to prepare something else. The server runs with CLIPDG_ROOT
set to that folder and the repository on PYTHONPATH, so its kernels import this checkout's package
and resolve relative paths against the copy, never against the repository's own outputs/.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CLIPDG_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = ROOT / "outputs" / "screenshots"  # git-ignored; for a human to look at
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")



def browser_unavailable() -> str | None:
    """Why the real-browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright; it uses the system Chromium)"
    return None


needs_browser = pytest.mark.skipif(browser_unavailable() is not None, reason=str(browser_unavailable()))


# ---------------------------------------------------------------------------------------------
# JupyterLab server
# ---------------------------------------------------------------------------------------------

# Settings that keep a test session quiet and every cell in the DOM (JupyterLab 4's default
# "contentVisibility" windowing keeps them, "full" would not; "none" is explicit).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


@dataclass
class LabServer:
    root_dir: Path
    port: int
    token: str
    process: subprocess.Popen
    log: Path
    env: dict = field(repr=False, default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "lab") -> str:
        return f"{self.base}/{path.lstrip('/')}?token={self.token}"

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""

    def jupyter(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Run `python -m jupyter ARGS` with the server's environment (its data dir, so its trust DB)."""
        return subprocess.run([sys.executable, "-m", "jupyter", *args], env=self.env, capture_output=True,
                              text=True, check=True, **kwargs)


def api(server: LabServer, path: str, method: str = "GET"):
    """Call the server's REST API (api/sessions, api/kernels, ...); the decoded JSON or None."""
    req = urllib.request.Request(f"{server.base}/{path.lstrip('/')}", method=method,
                                 headers={"Authorization": f"token {server.token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
    return json.loads(body) if body else None


def shutdown_kernels(server: LabServer) -> None:
    """Shut down every kernel the server runs (sessions of closed tabs keep theirs alive)."""
    with contextlib.suppress(OSError):
        for kernel in api(server, "api/kernels"):
            api(server, f"api/kernels/{kernel['id']}", method="DELETE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_environment(root_dir: Path, state_dir: Path) -> dict:
    """Environment of a hermetic server: its own config, data (trust DB), runtime and settings dirs."""
    env = dict(os.environ)
    for name in ("config", "data", "runtime", "settings", "workspaces"):
        (state_dir / name).mkdir(parents=True, exist_ok=True)
    for rel, value in LAB_SETTINGS.items():
        target = state_dir / "settings" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(value))
    env.update(
        JUPYTER_CONFIG_DIR=str(state_dir / "config"),
        JUPYTER_DATA_DIR=str(state_dir / "data"),  # the venv's kernels stay visible (sys-prefix)
        JUPYTER_RUNTIME_DIR=str(state_dir / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(state_dir / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(state_dir / "workspaces"),
        JUPYTER_PLATFORM_DIRS="1",
        CLIPDG_ROOT=str(root_dir),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1",
    )
    env.pop("JUPYTER_PATH", None)
    return env


@contextlib.contextmanager
def start_lab(root_dir: str | os.PathLike, state_dir: str | os.PathLike, timeout: float = 90, extra_args=()):
    """A `jupyter lab` (this interpreter's) on a free localhost port, with a token; stopped on exit.
    `extra_args`: more server options (e.g. those `make lab` passes)."""
    root_dir, state_dir = Path(root_dir).resolve(), Path(state_dir).resolve()
    env = lab_environment(root_dir, state_dir)
    log = state_dir / "jupyter-lab.log"
    for attempt in range(3):  # a free port may be taken between choosing and binding it
        port, token = _free_port(), secrets.token_hex(16)
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root_dir}", "--LabApp.news_url=", "--LabApp.extension_manager=readonly", *extra_args]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers, CI
            cmd.append("--allow-root")
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=root_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
        server = LabServer(root_dir, port, token, proc, log, env)
        if _wait_ready(server, timeout):
            break
        _stop(proc)
        if attempt == 2 or "address already in use" not in server.log_tail().lower():
            why = "exited" if proc.poll() is not None else f"did not answer within {timeout:.0f} s"
            raise RuntimeError(f"jupyter lab {why}:\n{server.log_tail()}")
    try:
        yield server
    finally:
        _stop(proc)


def _wait_ready(server: LabServer, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(server.url("api/status"), timeout=2) as r:
                if r.status == 200:
                    return True
        time.sleep(0.3)
    return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # jupyter_server shuts its kernels down on SIGTERM
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def copy_project(dest: Path, notebooks: bool = True) -> Path:
    """A repository-shaped folder for a server's root: notebooks/, parameters/, pyproject.toml, outputs/."""
    dest.mkdir(parents=True, exist_ok=True)
    if notebooks:
        shutil.copytree(ROOT / "notebooks", dest / "notebooks",
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"), dirs_exist_ok=True)
    else:
        (dest / "notebooks").mkdir(exist_ok=True)
    shutil.copytree(ROOT / "parameters", dest / "parameters", dirs_exist_ok=True)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    (dest / "outputs").mkdir(exist_ok=True)
    return dest


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory) -> Path:
    """The folder the server shows (override in a test module to prepare other files)."""
    return copy_project(tmp_path_factory.mktemp("lab_root"))


@pytest.fixture(scope="module")
def lab_server(lab_root, tmp_path_factory):
    if browser_unavailable():
        pytest.skip(browser_unavailable())
    with start_lab(lab_root, tmp_path_factory.mktemp("lab_state")) as server:
        yield server


# ---------------------------------------------------------------------------------------------
# Browser
# ---------------------------------------------------------------------------------------------

def launch_chromium(playwright, **kwargs):
    """Debian's Chromium through Playwright (never a downloaded one)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"], **kwargs)


@pytest.fixture(scope="module")
def lab_browser():
    if browser_unavailable():
        pytest.skip(browser_unavailable())
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


@pytest.fixture
def lab_page(lab_server, lab_browser):
    """A JupyterLab tab, loaded and ready (the file browser shown); console errors in page.console_errors."""
    context = lab_browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.set_default_timeout(60_000)
    open_lab(page, lab_server)
    yield page
    context.close()
    shutdown_kernels(lab_server)  # the next test starts from no running kernels


def open_lab(page, server: LabServer) -> None:
    """Load JupyterLab with a fresh workspace (no tabs restored from an earlier page)."""
    page.goto(server.url("lab") + "&reset")
    page.locator("#jp-main-dock-panel").wait_for(state="visible", timeout=90_000)
    page.locator(".jp-DirListing-content").wait_for(state="visible", timeout=60_000)


def screenshot(page, name: str, full_page: bool = False) -> Path:
    """Save outputs/screenshots/NAME.png (for a human to look at) and return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


# ---------------------------------------------------------------------------------------------
# JupyterLab actions and checks
# ---------------------------------------------------------------------------------------------

def show_file_browser(page) -> None:
    if not page.locator("#filebrowser").is_visible():
        page.locator('.jp-SideBar [data-id="filebrowser"]').click()
    page.locator("#filebrowser .jp-DirListing-content").wait_for(state="visible")


def open_in_file_browser(page, path: str):
    """Open the notebook `path` (relative to the server root) by double-clicking through the file browser.

    Returns the locator of the notebook panel that opened.
    """
    show_file_browser(page)
    crumbs = page.locator("#filebrowser .jp-BreadCrumbs-home")
    crumbs.click()  # start from the server root
    parts = PurePosixPath(path).parts
    for i, part in enumerate(parts):
        item = page.locator("#filebrowser .jp-DirListing-item", has=page.locator(
            f'.jp-DirListing-itemText >> text="{part}"'))
        item.first.wait_for(state="visible")
        item.first.dblclick()
        if i < len(parts) - 1:  # wait for the folder's listing
            page.locator(f'#filebrowser .jp-BreadCrumbs >> text="{part}"').wait_for(state="visible")
    tab = page.locator(f'.lm-DockPanel-tabBar .lm-TabBar-tab[title*="{parts[-1]}"]')
    tab.first.wait_for(state="visible")
    return current_notebook(page)


def current_notebook(page):
    """The visible notebook panel."""
    panel = page.locator(".jp-NotebookPanel:visible").last
    panel.wait_for(state="visible")
    return panel


def close_current_tab(page, save: bool = False) -> None:
    """Close the current main-area tab, answering the "Save your work" dialog if it comes."""
    page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabCloseIcon").first.click()
    dialog = page.locator(".jp-Dialog")
    with contextlib.suppress(Exception):
        dialog.wait_for(state="visible", timeout=1500)
    if dialog.is_visible():
        dialog.locator(f'button:has-text("{"Save" if save else "Discard"}")').click()
        dialog.wait_for(state="hidden")


def kernel_status(page) -> str | None:
    """The notebook toolbar's execution indicator: 'idle', 'busy', 'starting', ... (None: not shown)."""
    return page.evaluate("""() => {
        const el = [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator')]
            .find(e => e.offsetParent !== null);
        return el ? el.getAttribute('data-status') : null;
    }""")


def wait_for_kernel_idle(page, timeout: float = 120) -> None:
    page.wait_for_function("""() => {
        const el = [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator')]
            .find(e => e.offsetParent !== null);
        return el && el.getAttribute('data-status') === 'idle';
    }""", timeout=timeout * 1000)


def click_menu(page, menu: str, item: str, timeout: float = 30) -> None:
    """Main menu MENU > ITEM (e.g. 'Run', 'Run All Cells'), once the item is enabled."""
    deadline = time.monotonic() + timeout
    while True:
        page.locator(f'.lm-MenuBar-itemLabel:text-is("{menu}")').click()
        entry = page.locator(".lm-Menu-content .lm-Menu-item:visible").filter(
            has=page.locator(f'.lm-Menu-itemLabel:text-is("{item}")')).first
        entry.wait_for(state="visible")
        if "lm-mod-disabled" not in (entry.get_attribute("class") or ""):
            entry.click()
            return
        page.keyboard.press("Escape")  # e.g. the kernel is not connected yet
        if time.monotonic() > deadline:
            raise AssertionError(f"menu {menu} > {item} stayed disabled for {timeout:.0f} s")
        page.wait_for_timeout(500)


_CELLS_STARTED = """() => {
    const panel = [...document.querySelectorAll('.jp-NotebookPanel')].find(e => e.offsetParent !== null);
    return !!panel && [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
        .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent));
}"""

_CELLS_DONE = """() => {
    const panel = [...document.querySelectorAll('.jp-NotebookPanel')].find(e => e.offsetParent !== null);
    if (!panel) return false;
    const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim());
    const ind = panel.querySelector('.jp-Notebook-ExecutionIndicator');
    const idle = ind && ind.getAttribute('data-status') === 'idle';
    return idle && prompts.some(p => /\\[\\d+\\]/.test(p)) && !prompts.some(p => p.includes('*'));
}"""


def _prompts(page) -> list[str]:
    """The input prompts of the visible notebook's code cells: '[3]:', '[*]:', '[ ]:'."""
    return page.evaluate("""() => {
        const panel = [...document.querySelectorAll('.jp-NotebookPanel')].find(e => e.offsetParent !== null);
        return panel ? [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim())
                     : [];
    }""")


def run_all_cells(page, notebook_path: str, timeout: float = 300, screenshot_name: str | None = None) -> dict:
    """Open NOTEBOOK_PATH from the file browser, Run > Run All Cells, wait for the kernel to go idle.

    Returns {'code_cells', 'executed', 'seconds'}; `executed` < `code_cells` means a cell failed
    (JupyterLab stops at an error) -- see errors_on_page(). Saves a screenshot if asked.
    """
    open_in_file_browser(page, notebook_path)
    wait_for_kernel_idle(page)
    if any(p.strip(":") != "[ ]" for p in _prompts(page)):  # stored execution counts would look "done"
        click_menu(page, "Edit", "Clear Outputs of All Cells")
        page.wait_for_function(f"() => !({_CELLS_STARTED})()")
    start = time.monotonic()
    for attempt in range(3):  # a click that lands before the kernel is connected does nothing
        click_menu(page, "Run", "Run All Cells")
        with contextlib.suppress(Exception):
            page.wait_for_function(_CELLS_STARTED, timeout=15_000, polling=100)
            break
    else:
        raise AssertionError(f"Run All of {notebook_path} did not start: prompts {_prompts(page)}")
    try:
        page.wait_for_function(_CELLS_DONE, timeout=timeout * 1000, polling=250)
    except Exception as exc:  # playwright's TimeoutError: say where it stood
        shot = screenshot(page, (screenshot_name or "run_all") + "_timeout")
        raise AssertionError(f"Run All of {notebook_path} did not finish in {timeout:.0f} s: kernel "
                             f"{kernel_status(page)!r}, prompts {_prompts(page)}, errors {errors_on_page(page)}; "
                             f"screenshot {shot}") from exc
    seconds = time.monotonic() - start
    prompts = _prompts(page)
    counts = {"code_cells": len(prompts), "executed": sum(bool(re.fullmatch(r"\[\d+\]:?", p)) for p in prompts)}
    if screenshot_name:
        screenshot(page, screenshot_name)
    return {**counts, "seconds": round(seconds, 1)}


def errors_on_page(page) -> list[str]:
    """Texts of error outputs and of stderr outputs holding a traceback, in the visible notebook."""
    return page.evaluate("""() => {
        const panel = [...document.querySelectorAll('.jp-NotebookPanel')].find(e => e.offsetParent !== null)
            || document;
        const errors = [...panel.querySelectorAll('[data-mime-type="application/vnd.jupyter.error"]')]
            .map(e => e.innerText);
        const stderr = [...panel.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
            .map(e => e.innerText).filter(t => t.includes('Traceback'));
        return [...errors, ...stderr];
    }""")


def plotly_figures(page_or_locator) -> int:
    """How many plotly figures drew (a .js-plotly-plot / .plot-container holding an svg.main-svg)."""
    return page_or_locator.locator(".js-plotly-plot .main-svg, .plot-container .main-svg").evaluate_all(
        "els => new Set(els.map(e => e.closest('.js-plotly-plot, .plot-container'))).size")


def widgets_rendered(page_or_locator) -> int:
    """How many ipywidgets views drew (jupyter-widgets elements inside widget outputs)."""
    return page_or_locator.locator(".jp-OutputArea-output .jupyter-widgets").count()


def image_fingerprint(locator) -> dict:
    """An <img>'s src and a hash of its pixels (drawn onto a canvas), to tell two images apart."""
    info = locator.evaluate("""img => {
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        let pixels = '';
        try { c.getContext('2d').drawImage(img, 0, 0); pixels = c.toDataURL(); } catch (e) { pixels = 'tainted'; }
        return {src: img.src, width: img.naturalWidth, height: img.naturalHeight, pixels};
    }""")
    info["pixels"] = hashlib.sha1(info["pixels"].encode()).hexdigest()
    return info


# ---------------------------------------------------------------------------------------------
# Static pages (reports) with no network
# ---------------------------------------------------------------------------------------------

def block_network(page) -> list[str]:
    """Abort every request that is not file: (returns the list of blocked URLs, filled as they come)."""
    blocked: list[str] = []

    def handle(route):
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", handle)
    return blocked


def check_page_offline(browser, html_path: str | os.PathLike, screenshot_name: str | None = None,
                       timeout: float = 30) -> dict:
    """Open a local HTML file (file://) with all network blocked; report what drew.

    Waits until every plotly div (.plotly-graph-div) holds its svg, or plotly.js is missing, or
    `timeout` s. Returns {'figures': figures drawn, 'plotly_divs': figures the page holds,
    'blocked': URLs the page tried to fetch, 'errors': page/console errors, 'screenshot': path or
    None}. A self-contained report has figures == plotly_divs and blocked == [].
    """
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    blocked = block_network(page)
    try:
        page.goto(Path(html_path).resolve().as_uri(), wait_until="load")
        with contextlib.suppress(Exception):  # a timeout still reports what drew
            page.wait_for_function("""() => {
                const divs = [...document.querySelectorAll('.plotly-graph-div')];
                return typeof window.Plotly === 'undefined' || divs.every(d => d.querySelector('.main-svg'));
            }""", timeout=timeout * 1000, polling=200)
        page.wait_for_timeout(300)  # let the last figure finish laying out before the screenshot
        shot = screenshot(page, screenshot_name, full_page=True) if screenshot_name else None
        return {"figures": plotly_figures(page), "plotly_divs": page.locator(".plotly-graph-div").count(),
                "blocked": blocked, "errors": errors, "screenshot": shot}
    finally:
        context.close()
