"""Quiet runs: a normal kernel shutdown prints no ERROR line, and the tiny model's intended random
init is said in the project's words, not as open_clip's "No pretrained weights loaded" warning."""
from __future__ import annotations

import asyncio
import logging
import signal

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from clipdg_nb.pipeline.kernel import IPCKernelManager


def _spied_manager(sent: list) -> IPCKernelManager:
    """A kernel manager that records every signal it sends its kernel (then sends it)."""
    km = IPCKernelManager(kernel_name="python3")
    real = km._async_signal_kernel

    async def spy(signum):
        sent.append(signum)
        await real(signum)
    km._async_signal_kernel = spy
    return km


def test_a_normal_shutdown_sends_the_kernel_no_sigint():
    """jupyter_client interrupts (SIGINT) a kernel before asking it to shut down; a kernel inside a
    message handler then logs "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel."."""
    sent = []

    async def run():
        km = _spied_manager(sent)
        await km.start_kernel()
        try:
            client = km.client()
            client.start_channels()
            await client.wait_for_ready(timeout=60)
            client.stop_channels()
        finally:
            await km.shutdown_kernel()
        assert not await km.is_alive()

    asyncio.run(run())
    assert signal.SIGINT not in sent


def test_interrupting_a_running_kernel_still_works():
    """Only the shutdown's interrupt is dropped: an interrupt asked for (nbclient on a cell timeout)
    still reaches the kernel."""
    sent = []

    async def run():
        km = _spied_manager(sent)
        await km.start_kernel()
        try:
            await km.interrupt_kernel()
        finally:
            await km.shutdown_kernel(now=True)

    asyncio.run(run())
    assert sent[0] == signal.SIGINT


def test_a_notebook_run_through_the_runner_prints_no_kernel_error(tmp_path, capfd):
    import papermill
    nb = new_notebook(cells=[new_code_cell("x = 6 * 7\nprint(x)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    papermill.execute_notebook(str(tmp_path / "tiny.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, kernel_manager_class=IPCKernelManager)
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[0].outputs[0]["text"].strip() == "42"
    captured = capfd.readouterr()  # the kernel's stderr is this process's (it inherits fd 2)
    assert "KeyboardInterrupt" not in captured.err + captured.out
    assert "ERROR" not in captured.err


def test_pretraining_says_random_init_once_in_its_own_words(tmp_path, capfd, caplog):
    from clipdg_nb.demo.pretrain import PretrainConfig, pretrain_tiny
    lines = []
    cfg = PretrainConfig(n_images=40, steps=1, batch_size=8, supervised_steps=1)
    with caplog.at_level(logging.WARNING):
        pretrain_tiny(tmp_path, cfg, log=lines.append)
    captured = capfd.readouterr()
    assert "No pretrained weights" not in caplog.text + captured.err + captured.out
    assert sum("from random weights" in line for line in lines) == 1, lines
    # the filter is gone afterwards: open_clip's warning still shows where random init is not intended
    import open_clip
    with caplog.at_level(logging.WARNING):
        open_clip.create_model("clipdg-tiny-vit", pretrained=None)
    assert "No pretrained weights" in caplog.text
