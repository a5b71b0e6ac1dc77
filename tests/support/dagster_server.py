"""Real Dagster servers for tests: ``dagster dev`` (webserver + daemon) on a home's instance, on a free
127.0.0.1 port in its own process group, stopped by its PID (and any stray descendant) afterwards;
and a small GraphQL client for it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = 90


def descendants(root: int) -> list[int]:
    """PIDs of all live descendants of ``root`` (from /proc; empty where /proc is unavailable)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(proc: subprocess.Popen) -> None:
    """Stop a server and everything it started: its process group, then any stray descendant."""
    strays = descendants(proc.pid)
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in strays:  # e.g. a run worker that left the group; these pids were ours a moment ago
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


#: Runs ``argv[1:]`` with SIGINT/SIGTERM/SIGQUIT at their defaults: a shell may start the test run with
#: them ignored, and dagster dev (and Python's KeyboardInterrupt) would then ignore our SIGTERM too. A
#: wrapper process rather than ``preexec_fn``: that makes Python fork instead of vfork, and Deeplake's
#: after-fork handler in the parent then waits for good on a thread of its own (seen as a hung test
#: once this process had opened a table).
_DEFAULT_SIGNALS = (
    "import os, signal, sys\n"
    "for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT): signal.signal(sig, signal.SIG_DFL)\n"
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    if body.get("errors"):
        raise AssertionError(f"GraphQL errors: {body['errors']}")
    return body["data"]


LOCATIONS = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def _wait_until_serving(base: str, proc: subprocess.Popen, log: Path) -> None:
    """Wait (bounded) until the webserver answers and the code location is loaded without error."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    state = "no answer on /server_info"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited with {proc.returncode}; log tail:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{base}/server_info", timeout=5) as response:
                json.load(response)
            entries = graphql(base, LOCATIONS)["workspaceOrError"].get("locationEntries") or []
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as exc:
            state = f"not serving yet: {exc}"
        else:
            loaded = [e for e in entries if e["loadStatus"] == "LOADED"]
            errors = [e for e in loaded if e["locationOrLoadError"]["__typename"] == "PythonError"]
            if errors:
                pytest.fail(f"code location failed to load: {errors[0]['locationOrLoadError']['message']}")
            if entries and len(loaded) == len(entries):
                return
            state = f"code locations: {[(e['name'], e['loadStatus']) for e in entries]}"
        time.sleep(1)
    pytest.fail(f"dagster dev not ready after {SERVER_START_TIMEOUT_S} s ({state}); log tail:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Return once ``proc`` accepts connections on 127.0.0.1:``port``; raise if it exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s (exit code {proc.poll()})")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)


def dagster_command() -> list[str]:
    """How to run the ``dagster`` CLI of this interpreter's environment."""
    dagster = Path(sys.executable).with_name("dagster")
    return [str(dagster)] if dagster.is_file() else [sys.executable, "-m", "dagster"]


def server_env(**extra: str) -> dict[str, str]:
    """This environment without ``DAGSTER_HOME`` and ``LEROBOT_ASSETS_HOME``, telemetry off, the repo
    importable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "LEROBOT_ASSETS_HOME")}
    env["DAGSTER_DISABLE_TELEMETRY"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**env, **extra}


@contextmanager
def serve(command: list[str], base: str, cwd: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """Run a Dagster webserver ``command`` (which serves at ``base``) in its own process group,
    with default signal handling; yield ``base`` once it serves and its code location is loaded."""
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", _DEFAULT_SIGNALS, *command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: the finalizer kills all of it
        )
    try:
        _wait_until_serving(base, proc, log)
        yield base
    finally:
        stop(proc)


@contextmanager
def dagster_dev(home: Path, log: Path) -> Iterator[str]:
    """``dagster dev`` (webserver and daemon) on ``home``'s instance; yields the base URL."""
    port = free_port()
    command = [*dagster_command(), "dev", "-m", "lerobot_assets.definitions", "-d", str(REPO)]
    command += ["-h", "127.0.0.1", "-p", str(port)]
    env = server_env(DAGSTER_HOME=str(home / "dagster"), LEROBOT_ASSETS_HOME=str(home))
    with serve(command, f"http://127.0.0.1:{port}", home, env, log) as base:
        yield base
