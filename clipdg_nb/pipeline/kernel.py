"""The kernel papermill starts for a point: local IPC sockets in a private temporary folder, forked
from a warm process when the runner has one.

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

A warm kernel (`Zygote`): every demo kernel spent ~3.5 CPU-seconds starting Python and importing
torch, torchvision, open_clip, pandas and ipykernel before its first line of science: ~80 of the
demo's CPU-seconds on 23 points. The runner starts one zygote per worker: a process that imports
those once (`PRELOAD`), then forks one kernel per point. Each fork is a fresh kernel as far as the
notebook can tell: its own session (process group), the environment, working folder and connection
file papermill gave it, `sys.path` as `python -m ipykernel_launcher` leaves it, torch's intra-op
thread count from $OMP_NUM_THREADS, modules that look for a kernel when imported (tqdm.auto,
ipywidgets) looked again. Nothing the notebooks' own package does is preloaded (clipdg_nb, plotly,
tqdm.auto's choice). Safe to fork: the zygote starts no thread (it checks: a preload that starts
one switches it off, and kernels are then started the usual way), runs no torch op, and the
thread-count variables it was started with are the kernels' (else: the usual way too).
Ending with the runner: the zygote dies with its parent (PR_SET_PDEATHSIG, and its request pipe
closing), and each kernel watches the zygote (ipykernel's parent poller, `parent_handle`).
$CLIPDG_WARM_KERNEL=0 turns it off.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from queue import Empty

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from traitlets import default


class PromptKernelClient(AsyncKernelClient):
    """jupyter_client's client, except that `wait_for_ready` returns as soon as the kernel has
    answered, instead of after 0.2 s of silence on IOPub (its last step, which every point paid at
    its kernel's start): the reply to a kernel_info request, then that request's `idle` status on
    IOPub (the last message the kernel sends for it) show IOPub connected and nothing left to read."""

    async def _async_wait_for_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        while True:
            request = self.kernel_info()
            reply = await self._reply_to(request, within=1.0)
            if reply is not None and await self._iopub_idle_after(request):
                self._handle_kernel_info_reply(reply)
                return
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")

    wait_for_ready = _async_wait_for_ready

    async def _reply_to(self, msg_id: str, within: float):
        """The shell reply to request `msg_id` (replies to earlier requests are skipped); None
        when none comes `within` seconds."""
        end = time.monotonic() + within
        while (left := end - time.monotonic()) > 0:
            try:
                msg = await self.shell_channel.get_msg(timeout=left)
            except Empty:
                return None
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg
        return None

    async def _iopub_idle_after(self, msg_id: str) -> bool:
        """True at the `idle` status of request `msg_id` on IOPub. False, to ask again, when IOPub
        welcomes this client first (its subscription arrived only now, so that request's statuses
        may have been sent before it) or stays silent for 0.2 s (an older kernel that sends no
        welcome, not connected yet: jupyter_client's cue to ask again)."""
        while True:
            try:
                msg = await self.iopub_channel.get_msg(timeout=0.2)
            except Empty:
                return False
            if msg["msg_type"] == "iopub_welcome":
                return False
            if msg["msg_type"] == "status" and msg["parent_header"].get("msg_id") == msg_id \
                    and msg["content"].get("execution_state") == "idle":
                return True


class IPCKernelManager(AsyncKernelManager):
    @default("client_factory")
    def _default_client_factory(self):
        return PromptKernelClient

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

    async def _async_finish_shutdown(self, waittime: float | None = None, pollinterval: float = 0.1,
                                     restart: bool = False) -> None:
        # A kernel ends tens of milliseconds after its shutdown request: polling its process every
        # 0.1 s (jupyter_client's default) added up to 0.1 s per point.
        await super()._async_finish_shutdown(waittime, min(pollinterval, 0.01), restart)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            shutil.rmtree(os.path.dirname(self.ip), ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The warm kernel: a zygote process that forks kernels
# ---------------------------------------------------------------------------------------------

WARM_ENV = "CLIPDG_WARM_KERNEL"  # "0": every kernel a new process (`python -m ipykernel_launcher`)
# Imported once per zygote. Only third-party libraries that do not look for a running kernel when
# imported (tqdm.auto and ipywidgets, which they pull in, are looked at again in each kernel).
PRELOAD = ("ipykernel.kernelapp", "IPython", "numpy", "pandas", "pyarrow", "pyarrow.parquet", "PIL.Image",
           "torch", "torchvision", "open_clip", "safetensors.torch", "wilds", "sklearn.linear_model", "filelock")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_LAUNCHER = ("-m", "ipykernel_launcher")


class ForkedKernel:
    """The `subprocess.Popen`-like handle jupyter_client's provisioner keeps, for a kernel the zygote
    forked (not this process's child: no exit status; ended is all that is known)."""
    stdin = stdout = stderr = None

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None
        try:
            self._fd = os.pidfd_open(pid)  # readable once the process has ended, even if reaped
        except (AttributeError, OSError):
            self._fd = None

    def _ended(self) -> bool:
        if self._fd is not None:
            return bool(select.select([self._fd], [], [], 0)[0])
        try:
            os.kill(self.pid, 0)
            return False
        except ProcessLookupError:
            return True
        except PermissionError:
            return False

    def poll(self):
        if self.returncode is None and self._ended():
            self.returncode = 0
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        return self.returncode

    def wait(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """A process with `PRELOAD` imported that forks a kernel per `fork` call. `start` returns at once
    (the imports run meanwhile); the first `fork` waits for them."""

    def __init__(self, proc: subprocess.Popen, sock: socket.socket, threads: dict):
        self.proc, self.sock, self.threads = proc, sock, threads
        self.file = sock.makefile("rwb")
        self.problem: str | None = None
        self.ready = False
        self.lock = threading.Lock()

    @classmethod
    def start(cls, preload=PRELOAD) -> "Zygote":
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        proc = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno()), str(os.getpid()),
                                 ",".join(preload)],
                                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        return cls(proc, ours, {v: env.get(v) for v in THREAD_VARS})

    def _read(self) -> dict:
        line = self.file.readline()
        if not line:
            raise OSError("the warm kernel process ended")
        return json.loads(line)

    def usable(self, kernel_cmd, env) -> bool:
        """Whether a kernel for `kernel_cmd` can be forked here: the launcher of this Python, the same
        thread-count variables, and a zygote whose imports started no thread."""
        if self.problem is not None or self.proc.poll() is not None:
            return False
        cmd = list(kernel_cmd or [])
        if len(cmd) < 3 or tuple(cmd[1:3]) != _LAUNCHER or \
                os.path.realpath(cmd[0]) != os.path.realpath(sys.executable):
            return False
        env = env if env is not None else os.environ
        return all(env.get(v) == self.threads[v] for v in THREAD_VARS)

    def fork(self, kernel_cmd, env, cwd) -> int | None:
        """The pid of a kernel forked for `kernel_cmd`; None when the zygote cannot (the caller then
        starts the kernel the usual way)."""
        with self.lock:
            try:
                if not self.ready:
                    hello = self._read()
                    self.ready, self.problem = True, hello.get("problem")
                    if self.problem:
                        return None
                request = {"args": list(kernel_cmd[3:]), "env": dict(env if env is not None else os.environ),
                           "cwd": str(cwd or os.getcwd())}
                self.file.write(json.dumps(request).encode() + b"\n")
                self.file.flush()
                return int(self._read()["pid"])
            except (OSError, ValueError, KeyError) as err:
                self.problem = f"{type(err).__name__}: {err}"
                return None

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()  # end of its requests: it exits
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_ZYGOTE: Zygote | None = None


def preload_for(notebooks) -> tuple[str, ...]:
    """What a zygote for these notebooks imports: `PRELOAD` when one imports clipdg_nb (which
    imports all of it), else ipykernel and the entries of PRELOAD the notebooks import themselves
    (a notebook without torch does not wait for torch)."""
    import ast

    import nbformat
    from IPython.core.inputtransformer2 import TransformerManager

    roots: set[str] = set()
    to_python = TransformerManager().transform_cell  # magics (%time ...) into plain Python
    for path in notebooks:
        try:
            nb = nbformat.read(str(path), as_version=4)
        except Exception:  # validation reports unreadable notebooks; nothing to preload for one
            continue
        for cell in nb.cells:
            if cell.get("cell_type") != "code":
                continue
            try:
                tree = ast.parse(to_python(cell.source))
            except (SyntaxError, ValueError):  # validation reports it; nothing to preload for it
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    roots.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    roots.add(node.module.split(".")[0])
    if "clipdg_nb" in roots:
        return PRELOAD
    return tuple(m for m in PRELOAD if m.startswith(("ipykernel", "IPython")) or m.split(".")[0] in roots)


def start_zygote(preload=PRELOAD) -> Zygote | None:
    """Start this process's zygote (once); None when turned off ($CLIPDG_WARM_KERNEL=0)."""
    global _ZYGOTE
    if os.environ.get(WARM_ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return None
    if _ZYGOTE is None or _ZYGOTE.proc.poll() is not None:
        _ZYGOTE = Zygote.start(tuple(preload))
    return _ZYGOTE


def stop_zygote() -> None:
    global _ZYGOTE
    if _ZYGOTE is not None:
        _ZYGOTE.close()
        _ZYGOTE = None


class WarmKernelManager(IPCKernelManager):
    """IPC kernels forked from this process's zygote when there is one (`start_zygote`), started
    the usual way otherwise."""

    async def _async_launch_kernel(self, kernel_cmd, **kw) -> None:
        zygote = _ZYGOTE
        if zygote is None or not zygote.usable(kernel_cmd, kw.get("env")):
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        pid = zygote.fork(kernel_cmd, kw.get("env"), kw.get("cwd"))
        if pid is None:
            return await super()._async_launch_kernel(kernel_cmd, **kw)
        provisioner = self.provisioner
        provisioner.process = ForkedKernel(pid)
        provisioner.pid, provisioner.pgid = pid, pid  # the kernel leads its own session, as Popen's would
        provisioner.cwd = kw.get("cwd") or os.getcwd()
        self._reconcile_connection_info(provisioner.connection_info)


# ---- inside the zygote ----------------------------------------------------------------------

def _reap(*_) -> None:
    """Collect ended kernels (their CPU time then counts in this process's children, as a kernel
    papermill started itself does)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _zygote_main(fd: int, parent: int, preload) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(0)
    sock = socket.socket(fileno=fd)
    start_dir = sys.path[0] if sys.path else None  # what `python -m` put first
    problem = None
    for name in preload:
        try:
            __import__(name)
        except Exception:  # a library missing here is imported by the kernel itself, as usual
            pass
    # pyarrow's jemalloc keeps a background thread: jemalloc forks safely (its own atfork handlers)
    threads = [t for t in os.listdir("/proc/self/task") if not _thread_name(t).startswith("jemalloc")] \
        if os.path.isdir("/proc/self/task") else [None] * threading.active_count()
    if len(threads) > 1 or threading.active_count() > 1:
        problem = f"{len(threads)} threads after the imports: forking would be unsafe"
    file = sock.makefile("rwb")
    file.write(json.dumps({"problem": problem, "pid": os.getpid()}).encode() + b"\n")
    file.flush()
    if problem:
        os._exit(0)
    signal.signal(signal.SIGCHLD, _reap)  # no zombies
    for line in file:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                file.close()
                sock.close()
                _become_kernel(request, start_dir)
            finally:
                os._exit(1)
        file.write(json.dumps({"pid": pid}).encode() + b"\n")
        file.flush()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:  # the runner is done: wait for kernels still ending, then go
        try:
            os.wait()
        except ChildProcessError:
            break
    os._exit(0)


def _thread_name(tid: str) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _become_kernel(request: dict, start_dir) -> None:
    """In the forked child: become what `python -m ipykernel_launcher <args>` would have started."""
    import atexit
    import random

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    zygote = os.getppid()
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ["JPY_PARENT_PID"] = str(zygote)
    os.chdir(request["cwd"])
    if sys.path and start_dir is not None and sys.path[0] == start_dir:
        del sys.path[0]  # as ipykernel_launcher does; the kernel's shell puts '' (its folder) first
    random.seed()  # the zygote's state is every fork's otherwise
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules and os.environ.get("OMP_NUM_THREADS"):
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    import ipykernel_launcher
    from ipykernel.kernelapp import IPKernelApp

    class ForkedKernelApp(IPKernelApp):
        def init_kernel(self):
            super().init_kernel()
            _look_again_for_the_kernel()

    sys.argv = [ipykernel_launcher.__file__, *request["args"]]
    code = 0
    try:
        ForkedKernelApp.launch_instance(argv=[*request["args"], f"--IPKernelApp.parent_handle={zygote}"])
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    finally:
        _let_the_control_thread_end(ForkedKernelApp)
        _skip_full_collections()  # os._exit follows
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _let_the_control_thread_end(app_class, timeout: float = 2.0) -> None:
    """ipykernel answers the shutdown request on its control thread, which then flushes stdout
    through the IOPub thread; at exit `IPKernelApp.close` stops the IOPub thread, then joins the
    control thread. When that flush had not happened yet, it waited on the stopped IOPub thread
    until jupyter_client gave up (2.5 s, then SIGTERM): one point in seven here once the exit had
    no full collection before it. The control thread's loop was told to stop: let it end first."""
    app = app_class.instance() if app_class.initialized() else None
    thread = getattr(app, "control_thread", None)
    if thread is not None and thread.is_alive():
        thread.join(timeout)


def _skip_full_collections() -> None:
    """Make gc.collect() a no-op in a kernel about to `os._exit`. IPython's exit clears the user
    namespace, then collects the whole heap (`DisplayHook.flush`): 0.3 CPU-s with torch loaded, at
    every point's end, for memory the OS takes back a moment later. Clearing the namespace still
    frees what reference counting frees (an unclosed file is still flushed and closed)."""
    import gc

    gc.collect = lambda generation=2: 0


def _look_again_for_the_kernel() -> None:
    """Modules that decided at import, in the zygote, that no kernel was running: decide again."""
    import importlib

    for name in ("tqdm.autonotebook", "tqdm.auto"):
        if name in sys.modules:
            importlib.reload(sys.modules[name])
    widgets = sys.modules.get("ipywidgets")
    if widgets is not None and hasattr(widgets, "_handle_ipython"):
        widgets._handle_ipython()


if __name__ == "__main__":
    _zygote_main(int(sys.argv[1]), int(sys.argv[2]), [m for m in sys.argv[3].split(",") if m])
