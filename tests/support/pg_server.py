"""A real PostgreSQL server for tests: Debian's binaries (``tests/support/pg_setup.sh`` installs them),
``initdb`` into a fresh temporary directory, ``pg_ctl start`` on a free port on 127.0.0.1, and
stopped by the postmaster's PID when the block ends.

Usage::

    with PostgresServer() as pg:
        pg.url   # postgresql+psycopg2://postgres@127.0.0.1:<port>/postgres (the form Dagster's postgres_url takes)

PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` user the
Debian package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def postgres_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``: Debian's newest, else the PATH's; None if absent."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class PostgresServer:
    """PostgreSQL in a temporary directory, on a free loopback port, trusting local connections."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed: run `sh tests/support/pg_setup.sh`")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        self.dir = Path(tempfile.mkdtemp(prefix="lerobot-assets-pg-"))
        self.pid: int | None = None

    def _run(self, *command: str) -> None:
        user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*user, *command], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{command[0]} failed: {done.stderr.strip()[-2000:]}")

    def __enter__(self) -> PostgresServer:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        data = self.dir / "data"
        try:
            self._run(str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync")
            options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off -c max_connections=200"
            self._run(str(self.bin / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-o", options,
                      "-l", str(self.dir / "server.log"))
            self.pid = int((data / "postmaster.pid").read_text().split()[0])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGINT)  # "fast" shutdown: ends sessions, then the postmaster
            deadline = time.monotonic() + 30
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
