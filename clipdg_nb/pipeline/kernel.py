"""The kernel papermill starts for a point: local IPC sockets in a private temporary folder.

Over TCP without CurveZMQ keys, every ipykernel warns "Kernel is running over TCP without
encryption" (once per point: 23 copies in the demo, tangled with the progress bars). IPC sockets
are files only this user can reach, so the warning is moot, and no TCP port is opened at all.

A kernel ends with the process that started it, even a SIGKILLed one: jupyter_client passes its
pid (JPY_PARENT_PID) and ipykernel's parent poller exits within a second once its parent changes;
the runner's pool workers watch the runner likewise (`runner.watch_parent`), so a killed
`clipdg run --jobs N` leaves neither workers nor kernels behind
(tests/test_sweep_faults.py::test_kill_9_of_a_parallel_run_ends_its_workers_and_kernels).

A normal shutdown sends no SIGINT. jupyter_client's `shutdown_kernel` interrupts the kernel before
it asks it to shut down; an ipykernel that catches the signal inside a message handler logs
"[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel." to the terminal, which read as a
failure after every point. Papermill shuts a kernel down only when it is idle (all cells ran, or
one raised), and the shutdown request itself travels on the control channel, which a busy kernel
also answers; one that does not is terminated, then killed, by `finish_shutdown`.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from jupyter_client.manager import AsyncKernelManager
from traitlets import default


class IPCKernelManager(AsyncKernelManager):
    @default("transport")
    def _default_transport(self):
        return "ipc"

    @default("ip")
    def _default_ip(self):
        return os.path.join(tempfile.mkdtemp(prefix="clipdg-kernel-"), "kernel")

    async def _async_interrupt_kernel(self) -> None:
        if self.shutting_down:  # set by shutdown_kernel just before it interrupts: nothing to interrupt
            return
        await super()._async_interrupt_kernel()

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            shutil.rmtree(os.path.dirname(self.ip), ignore_errors=True)
