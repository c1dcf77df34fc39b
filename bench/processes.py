"""The benchmark's child processes: the upstream simulator and the proxy under twistd.

Each runs in a process of its own, so the load client, the proxy and the upstream do
not share one event loop. Every child is stopped by :meth:`Children.stop_all`
(SIGTERM, then SIGKILL), which the benchmark calls in a ``finally``; on Linux a child
also gets SIGTERM when the benchmark itself dies (``PR_SET_PDEATHSIG``), so not even
``kill -9`` of the benchmark leaves a proxy behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """Runs in the child between fork and exec."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: stop_all() still covers every ordinary exit
    # Every held stream needs two sockets in the proxy: the parent raised its limits
    # (raise_fd_limit) and the child inherits them; the soft one is set to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit to ``wanted`` (the hard one too, when allowed:
    root may); returns the soft limit reached. Children started here inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass  # not privileged: the hard limit is the ceiling
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


def free_port() -> int:
    """A loopback port that was free a moment ago (twistd needs a number up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    """The process's resident set size (``VmRSS``), in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the proxy's workers), as far as they still run."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children", encoding="ascii") as children:
                queue.extend(int(c) for c in children.read().split())
        except OSError:
            continue
    return pids


def tree_rss_kib(pid: int) -> int:
    """Resident set of ``pid`` and its descendants together (shared pages counted in each)."""
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_kib(member)
    return total


def pss_kib(pid: int) -> int:
    """The process's proportional set size: shared pages divided among their sharers."""
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss for pid {pid}")


def tree_pss_kib(pid: int) -> int:
    """Memory of ``pid`` and its descendants together, shared pages counted once (PSS)."""
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError, RuntimeError):
            total += pss_kib(member)
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its living descendants."""
    total = 0.0
    for member in tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(member)
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far: the scheduler's count in
    nanoseconds (``/proc/PID/task/*/schedstat``) where the kernel keeps it, else
    ``/proc/PID/stat``'s clock ticks (10 ms each: a 2,000-token stream takes less)."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(FileNotFoundError, ProcessLookupError),
                open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as schedstat,
            ):
                total += int(schedstat.read().split()[0])
        if total:
            return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After the ")" closing the command name, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """One started process and the file its output goes to."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log_path: str) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with status {code} (see its log)")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return "(no log)"


class Children:
    """Starts the children and, whatever happens, stops them again."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.children: list[Child] = []

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str], *, pipe_stdout: bool = False, pipe_stdin: bool = False
    ) -> Child:
        """Start ``argv``; stderr (and stdout unless piped) go to ``WORKDIR/NAME.log``."""
        log_path = os.path.join(self.workdir, f"{name}.log")
        log = open(log_path, "wb")  # noqa: SIM115 - the child owns it from here
        try:
            process = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.PIPE if pipe_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe_stdout else log,
                stderr=log,
                preexec_fn=_child_setup,
            )
        finally:
            log.close()
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def start_simulator(self, slow_interval: float, timeout: float = 20.0) -> tuple[Child, str]:
        """Start ``bench/run_simulator.py``; returns it and its base URL."""
        argv = [sys.executable, os.path.join(REPO, "bench", "run_simulator.py"), "--slow-interval", str(slow_interval)]
        child = self._spawn("simulator", argv, dict(os.environ), pipe_stdout=True)
        assert child.process.stdout is not None
        url = read_line(child.process.stdout, timeout)
        if not url.startswith("http://127.0.0.1:"):
            child.check_alive()
            raise RuntimeError(f"simulator did not announce its URL within {timeout:g}s (got {url!r})")
        return child, url

    def start_nginx(self, argv: list[str]) -> Child:
        """Start nginx in the foreground (its configuration says ``daemon off``)."""
        return self._spawn("nginx", argv, dict(os.environ))

    def start_holder(self, argv: list[str]) -> Child:
        """Start ``bench/holder.py`` with ``argv``: commands on its stdin, JSON lines on its stdout."""
        script = [sys.executable, os.path.join(REPO, "bench", "holder.py"), *argv]
        return self._spawn("holder", script, dict(os.environ), pipe_stdout=True, pipe_stdin=True)

    def start_proxy(self, port: int, config_file: str, workers: int | None = None, name: str = "proxy") -> Child:
        """Start the proxy the way it is deployed: ``twistd -n ollama-proxy --config FILE``
        (``--workers N`` when given). Provider keys from the environment are left out:
        the file says everything."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("OLLAMA_HOST", "OLLAMA_PROXY_CONFIG", "OLLAMA_PROXY_LISTEN")
            and not k.endswith(("_API_KEY", "_BASE_URL"))
        }
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "ollama-proxy",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
        ]
        argv += ["--config", os.path.abspath(config_file)]
        if workers is not None:
            argv += ["--workers", str(workers)]
        return self._spawn(name, argv, env)

    def stop(self, child: Child, grace: float = 10.0) -> None:
        """SIGTERM one child and wait for it (SIGKILL after ``grace``)."""
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(grace)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        for pipe in (child.process.stdout, child.process.stdin):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.children.remove(child)

    def stop_all(self, grace: float = 5.0) -> None:
        """SIGTERM every child still running, then SIGKILL what is left after ``grace``."""
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.process.wait(remaining)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            for pipe in (child.process.stdout, child.process.stdin):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()


def read_line(stream: Any, timeout: float) -> str:
    """The first line of a child's stdout, waiting at most ``timeout`` seconds."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                break
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    finally:
        selector.close()
    return data.decode("utf-8", "replace").strip()
