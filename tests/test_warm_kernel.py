"""Warm kernels (`pipeline.kernel.Zygote`): points' kernels forked from a process that imported the
heavy libraries once, and indistinguishable from a fresh kernel to the notebook: the same
environment, working folder, thread count and `sys.path`; the zygote ends with the sweep."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

from clipdg_nb.pipeline import kernel
from clipdg_nb.pipeline.runner import run_experiment

sys.path.insert(0, str(Path(__file__).parent))
from test_sweep_faults import make_project  # the tiny notebook those tests use

PROBE = '''import json, os, sys
probe = {"pid": os.getpid(), "ppid": os.getppid(), "parent_env": os.environ.get("JPY_PARENT_PID"),
         "cwd": os.getcwd(), "omp": os.environ.get("OMP_NUM_THREADS"), "root": os.environ.get("CLIPDG_ROOT"),
         "manifest": bool(os.environ.get("CLIPDG_SWEEP_MANIFEST")), "path0": sys.path[:1],
         "pgid_is_pid": os.getpgid(0) == os.getpid(), "json_preloaded": "json" in sys.modules}
with open(f"probe-{x}.json", "w") as fh:
    json.dump(probe, fh)
'''


def _project(tmp_path: Path, xs) -> Path:
    path = make_project(tmp_path, xs)
    nb = nbformat.read(str(tmp_path / "nb.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    nbformat.write(nb, str(tmp_path / "nb.ipynb"))
    return path


def _probes(tmp_path: Path, xs) -> list[dict]:
    return [json.loads((tmp_path / f"probe-{x}.json").read_text()) for x in xs]


@pytest.mark.parametrize("jobs", [1, 2])
def test_kernels_are_forked_from_the_zygote_and_see_what_a_fresh_kernel_sees(tmp_path, monkeypatch, jobs):
    monkeypatch.delenv(kernel.WARM_ENV, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = _project(tmp_path, range(3))
    summary = run_experiment(path, jobs=jobs, root=tmp_path, progress=False)
    assert len(summary.done) == 3, summary.format()
    probes = _probes(tmp_path, range(3))
    zygotes = {p["ppid"] for p in probes}
    # one zygote per worker (jobs=2: two workers, and a worker may run one or two of the points)
    assert 1 <= len(zygotes) <= jobs
    for p in probes:
        assert p["ppid"] != os.getpid()  # the zygote's child, not the runner's (nor a worker's)
        assert p["parent_env"] == str(p["ppid"])  # ipykernel's parent poller watches the zygote
        assert p["pgid_is_pid"]  # its own session, as a Popen'ed kernel's (interrupts reach only it)
        assert Path(p["cwd"]) == tmp_path.resolve()
        assert p["omp"] == "1" and p["root"] == str(tmp_path.resolve()) and p["manifest"]
    assert kernel._ZYGOTE is None  # jobs=1: stopped after the stage; jobs=2: it lived in the workers
    for pid in zygotes:  # no zygote left behind
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_turned_off_the_kernel_is_the_runners_child_and_sees_the_same(tmp_path, monkeypatch):
    seen = {}
    for warm in ("1", "0"):
        monkeypatch.setenv(kernel.WARM_ENV, warm)
        path = _project(tmp_path / warm, [0])
        summary = run_experiment(path, jobs=1, root=tmp_path / warm, progress=False)
        assert len(summary.done) == 1, summary.format()
        (seen[warm],) = _probes(tmp_path / warm, [0])
    assert seen["0"]["ppid"] == os.getpid() and seen["1"]["ppid"] != os.getpid()
    same = ("path0", "omp", "manifest", "pgid_is_pid", "json_preloaded")
    assert {k: seen["1"][k] for k in same} == {k: seen["0"][k] for k in same}


def test_the_stage_times_reach_the_marker_and_the_summary(tmp_path, monkeypatch):
    monkeypatch.delenv(kernel.WARM_ENV, raising=False)
    path = _project(tmp_path, [0])
    summary = run_experiment(path, jobs=1, root=tmp_path, progress=False)
    (result,) = summary.done
    marker = json.loads(next((tmp_path / "outputs/notebooks").rglob("*.done.json")).read_text())
    assert marker["stages"] == result.stages and result.stages["total_s"] == pytest.approx(result.seconds, abs=1e-3)
    parts = sum(v for k, v in result.stages.items() if k != "total_s")
    assert parts == pytest.approx(result.seconds, abs=0.05)  # the stages account for the whole point
    assert "time per stage, summed over 1 executed point(s)" in summary.format()


def test_preload_follows_what_the_notebooks_import(tmp_path):
    light = tmp_path / "light.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import json\nfrom pandas import DataFrame\n%time x = 1"),
                nbformat.v4.new_code_cell("import os")]
    nbformat.write(nb, str(light))
    assert kernel.preload_for([light]) == ("ipykernel.kernelapp", "IPython", "pandas")
    repo = Path(kernel.__file__).parents[2]
    assert kernel.preload_for([light, repo / "notebooks/02_few_shot_sweep.ipynb"]) == kernel.PRELOAD


def test_a_zygote_that_cannot_fork_falls_back_to_a_fresh_kernel(tmp_path, monkeypatch):
    """A zygote whose imports started a thread (or that died) is not used: the kernel starts as usual."""
    monkeypatch.delenv(kernel.WARM_ENV, raising=False)
    monkeypatch.setattr(kernel.Zygote, "fork", lambda self, *a, **k: None)
    path = _project(tmp_path, [0])
    summary = run_experiment(path, jobs=1, root=tmp_path, progress=False)
    assert len(summary.done) == 1, summary.format()
    (probe,) = _probes(tmp_path, [0])
    assert probe["ppid"] == os.getpid()


def test_forked_kernels_end_on_their_own_after_the_shutdown_request(monkeypatch):
    """Each forked kernel ends by itself once asked (no SIGTERM), and quickly enough for
    jupyter_client's first wait: its exit skips the full garbage collection, and lets ipykernel's
    control thread finish its last flush before the IOPub thread stops (without that, about one
    kernel in seven hung until jupyter_client terminated it after 2.5 s)."""
    import asyncio

    from jupyter_client.manager import _ShutdownStatus  # jupyter_client's record of which way a shutdown went

    monkeypatch.delenv(kernel.WARM_ENV, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    async def start_and_stop():
        km = kernel.WarmKernelManager(kernel_name="python3")
        await km.start_kernel()
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            assert isinstance(client, kernel.PromptKernelClient)
            assert isinstance(km.provisioner.process, kernel.ForkedKernel)  # from the zygote
        finally:
            client.stop_channels()
            await km.shutdown_kernel()
        return km._shutdown_status

    kernel.start_zygote(("ipykernel.kernelapp", "IPython"))
    try:
        ways = [asyncio.run(start_and_stop()) for _ in range(20)]
    finally:
        kernel.stop_zygote()
    assert ways == [_ShutdownStatus.ShutdownRequest] * 20, ways


class _FakeChannel:
    def __init__(self, messages):
        self.messages = list(messages)

    async def get_msg(self, timeout=None):
        from queue import Empty

        if not self.messages:
            raise Empty
        return self.messages.pop(0)


def _msg(kind, parent=None, state=None):
    return {"msg_type": kind, "parent_header": {"msg_id": parent} if parent else {},
            "content": {"execution_state": state} if state else {}}


@pytest.mark.parametrize("iopub, ready", [
    ([_msg("status", "r1", "busy"), _msg("status", "r1", "idle")], True),
    ([_msg("status", "r0", "idle"), _msg("status", "r1", "busy"), _msg("status", "r1", "idle")], True),
    ([_msg("status", "r1", "busy")], False),  # silence before its idle: ask again
    ([_msg("iopub_welcome"), _msg("status", "r1", "busy"), _msg("status", "r1", "idle")], False),  # just subscribed
    ([_msg("status", "r0", "idle")], False),  # another request's statuses only
])
def test_the_kernel_is_ready_at_the_idle_status_of_its_own_request(iopub, ready):
    import asyncio

    client = kernel.PromptKernelClient()
    client._iopub_channel = _FakeChannel(iopub)  # what the `iopub_channel` property returns once made
    assert asyncio.run(client._iopub_idle_after("r1")) is ready
