"""Start, find and stop one local process, tracked by a pid file under the state directory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from infrastructure.local.errors import RuntimeSetupError


def port_owner(port: int, host: str = "127.0.0.1") -> str | None:
    """Describe who listens on a port, or None when it is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return None
        except OSError:
            pass
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline()[:3])[:80]})"
            except psutil.Error:
                return f"pid {conn.pid}"
    return "another process"


def check_ports_free(name: str, ports: tuple[int, ...]) -> None:
    for port in ports:
        owner = port_owner(port)
        if owner:
            raise RuntimeSetupError(f"{name}: port {port} is already in use by {owner}")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    run_dir: Path
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    ports: tuple[int, ...] = ()

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid of our running process, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
            created = float(self.pid_file.read_text().split()[1])
        except (OSError, ValueError, IndexError):
            return None
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1 and proc.status() != psutil.STATUS_ZOMBIE:
                return pid
        except psutil.Error:
            pass
        self.pid_file.unlink(missing_ok=True)
        return None

    def check_ports(self) -> None:
        check_ports_free(self.name, self.ports)

    def start(self) -> int:
        running = self.pid()
        if running:
            return running
        self.check_ports()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid} {psutil.Process(proc.pid).create_time()}\n")
        return proc.pid

    def exited_early(self) -> str | None:
        """When the process died, the last lines of its log; else None."""
        if self.pid():
            return None
        try:
            tail = self.log_file.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            tail = []
        return " | ".join(tail) or "no output"

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM the process group, then SIGKILL after timeout. Returns True if something was stopped."""
        pid = self.pid()
        if not pid:
            return False
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            procs = []
        _signal_group(pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        if alive:
            _signal_group(pid, signal.SIGKILL)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(alive, timeout=5)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill9(self) -> None:
        """kill -9 the whole process group (fault tests)."""
        pid = self.pid()
        if pid:
            _signal_group(pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(10)
            self.pid_file.unlink(missing_ok=True)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_while_progressing(
    predicate: Callable[[], bool], progress: Callable[[], object], stall: float, limit: float
) -> bool:
    """wait_until(predicate), giving up only once progress() has returned the same value for `stall` seconds,
    or after `limit` seconds in all."""
    start = time.monotonic()
    last, changed = progress(), start
    while time.monotonic() - start < limit:
        if predicate():
            return True
        now_seen = progress()
        if now_seen != last:
            last, changed = now_seen, time.monotonic()
        elif time.monotonic() - changed >= stall:
            return predicate()
        time.sleep(0.3)
    return predicate()
