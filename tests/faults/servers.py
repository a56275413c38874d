"""A PostgreSQL server of a test's own, which the test may stop, kill and start again.

The shared test server (TEST_DATABASE_URL) is never touched: this one lives in a temporary folder, on a free port,
and only the postmaster it started (read from its own ``postmaster.pid``) is ever signalled. PostgreSQL refuses to
run as root, so it runs as the ``postgres`` user (``runuser -u postgres --``) when the tests run as root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.net import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


class OwnPostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        # Not under pytest's tmp_path: its parents are root's own (0700), which the postgres user cannot enter.
        self._root = Path(tempfile.mkdtemp(prefix="companion-own-pg-"))
        self._data = self._root / "data"
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if not (BIN / "initdb").exists():
            pytest.fail(f"PostgreSQL 15 binaries are not in {BIN} (`make test` installs them)")
        if self._as_postgres:
            shutil.chown(self._root, user="postgres", group="postgres")
        os.chmod(self._root, 0o700)
        self._run("initdb", "-D", str(self._data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self._root} -c fsync=off"
        self._run("pg_ctl", "start", "-w", "-t", "30", "-D", str(self._data), "-l", str(self._root / "log"),
                  "-o", options)  # fmt: skip

    def stop(self) -> None:
        """A clean, fast shutdown (sessions are cut, as when a managed database restarts)."""
        if self.running:
            self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "fast", "-D", str(self._data))

    def kill(self) -> None:
        """SIGKILL to the postmaster this server started; its backends exit on their own when it is gone."""
        pid = self._postmaster_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.02)

    def pause(self) -> None:
        """SIGSTOP to the postmaster and its backends: connections stay open and nothing answers (a stalled host)."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGCONT)

    def _processes(self) -> list[int]:
        pid = self._postmaster_pid()
        if pid is None:
            return []
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *(int(child) for child in children)]

    @property
    def running(self) -> bool:
        pid = self._postmaster_pid()
        return pid is not None and _alive(pid)

    def cleanup(self) -> None:
        try:
            if self.running:
                self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "immediate", "-D", str(self._data))
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self._data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _run(self, binary: str, *args: str) -> None:
        result = subprocess.run([*self._as_postgres, str(BIN / binary), *args], capture_output=True, text=True,
                                timeout=60, check=False, cwd=self._root)  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"{binary} failed ({result.returncode}): {result.stderr[-2000:]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; its state in /proc says it is gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
