"""The table write lease (lerobot_assets.core.table.lease): one holder at a time across threads and processes,
on a local path and on a real S3-compatible server (moto on 127.0.0.1); dead or silent holders are
taken over, live ones are not."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from lerobot_assets.core.errors import TableError
from lerobot_assets.core.table.access import storage_creds
from lerobot_assets.core.table.lease import _pid_space, check_held, hold, lease_url

from tests.support.s3_server import S3Server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A table URL (the table itself need not exist: the lease lives beside it)."""
    if request.param == "local":
        return str(tmp_path / "tables" / "ds")
    server = request.getfixturevalue("s3")
    return f"s3://{server.bucket}/{tmp_path.name}/ds"


def _contend(table: str, journal: str, rounds: int, ttl: float) -> None:
    """Take the lease ``rounds`` times, journaling entry and exit (run by threads and child processes)."""
    me = f"{os.getpid()}-{threading.get_ident()}"
    for _ in range(rounds):
        with hold(table, ttl=ttl):
            with open(journal, "a") as f:
                f.write(f"in {me}\n")
            time.sleep(0.02)
            with open(journal, "a") as f:
                f.write(f"out {me}\n")


def _assert_never_two_holders(journal: Path, holds: int) -> None:
    lines = journal.read_text().split()
    events = list(zip(lines[::2], lines[1::2]))
    assert len(events) == 2 * holds
    for (enter, who), (leave, same) in zip(events[::2], events[1::2]):
        assert (enter, leave, who) == ("in", "out", same), "two holders at once"


def _child(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)


def _holding(code: str, held: Path) -> subprocess.Popen:
    """A child running ``code``, once it has touched ``held`` (it holds the lease then)."""
    holder = _child(code)
    deadline = time.monotonic() + 60
    while not held.exists():
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.05)
    return holder


def test_concurrent_threads_and_processes_never_hold_it_together(table: str, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    code = f"from tests.unit.test_lease import _contend; _contend({table!r}, {str(journal)!r}, 4, 2.0)"
    children = [_child(code) for _ in range(3)]
    threads = [threading.Thread(target=_contend, args=(table, str(journal), 4, 2.0)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [child.wait(120) for child in children] == [0, 0, 0]
    _assert_never_two_holders(journal, 24)


def test_it_is_reentrant_within_a_thread(table: str) -> None:
    with hold(table, ttl=2.0):
        with hold(table, ttl=2.0):
            check_held()
    with hold(table, ttl=2.0):  # released: taken again at once
        pass


def _s3_object(table: str) -> tuple[object, str, str]:
    bucket, _, key = lease_url(table).removeprefix("s3://").partition("/")
    creds = storage_creds(table) or {}
    client = boto3.client("s3", endpoint_url=creds["endpoint_url"], region_name=creds["aws_region"],
                          aws_access_key_id=creds["aws_access_key_id"], aws_secret_access_key=creds["aws_secret_access_key"])
    return client, bucket, key


def _s3_table(s3: S3Server, name: str) -> str:
    return f"s3://{s3.bucket}/lease-{name}-{time.monotonic_ns()}/ds"


def test_an_s3_lease_nobody_renews_is_taken_over_after_its_time_to_live(s3: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    table = _s3_table(s3, "silent")
    client, bucket, key = _s3_object(table)
    stale = {"host": "other-machine", "pid": 4242, "token": "gone", "since": "2026-01-01T00:00:00Z"}
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(stale).encode())
    caplog.set_level(logging.INFO, logger="lerobot_assets.core.table.lease")
    started = time.monotonic()
    with hold(table, ttl=1.0):
        waited = time.monotonic() - started
        holder = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert 1.0 <= waited < 10
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    assert "held by pid 4242 on host other-machine since 2026-01-01T00:00:00Z" in caplog.text
    assert "took over the write lease" in caplog.text
    with pytest.raises(client.exceptions.NoSuchKey):  # released
        client.get_object(Bucket=bucket, Key=key)


def test_an_s3_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(s3: S3Server) -> None:
    table = _s3_table(s3, "dead")
    client, bucket, key = _s3_object(table)
    dead = subprocess.Popen(["true"])
    dead.wait()
    body = {"host": socket.gethostname(), "pid": dead.pid, "pids": _pid_space(), "token": "x", "since": "2026-01-01T00:00:00Z"}
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())
    started = time.monotonic()
    with hold(table, ttl=60.0):
        assert time.monotonic() - started < 5


def test_an_s3_lease_from_another_pid_namespace_of_this_host_name_waits_its_time_to_live(s3: S3Server) -> None:
    """Containers may share the host name (``--network host``) but not their pids: no pid check then."""
    table = _s3_table(s3, "container")
    client, bucket, key = _s3_object(table)
    dead = subprocess.Popen(["true"])
    dead.wait()
    body = {"host": socket.gethostname(), "pid": dead.pid, "pids": "another-boot/pid:[1]", "token": "x",
            "since": "2026-01-01T00:00:00Z", "ttl": 1.5}
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())
    started = time.monotonic()
    with hold(table, ttl=0.5):  # the holder's 1.5 s time to live is the longer: it counts
        assert 1.5 <= time.monotonic() - started < 10


def test_a_live_holder_keeps_the_s3_lease_beyond_its_time_to_live(s3: S3Server, tmp_path: Path) -> None:
    """The holder renews its 2 s lease for 5 s; the waiter gets it only after the holder lets go."""
    table = _s3_table(s3, "live")
    released = tmp_path / "released"
    code = (
        "import time, pathlib\nfrom lerobot_assets.core.table.lease import hold\n"
        f"with hold({table!r}, ttl=2.0):\n"
        f"    pathlib.Path({str(tmp_path / 'held')!r}).touch()\n    time.sleep(5)\n"
        f"pathlib.Path({str(released)!r}).write_text(repr(time.time()))\n"
    )
    holder = _holding(code, tmp_path / "held")
    with hold(table, ttl=1.0):
        acquired = time.time()
    assert holder.wait(60) == 0
    assert acquired >= float(released.read_text()) - 0.01


def test_a_lost_s3_lease_stops_the_commit(s3: S3Server) -> None:
    """Another writer took the lease over (this process stalled): the holder notices at its next
    renewal, refuses to commit, and the block fails."""
    table = _s3_table(s3, "lost")
    client, bucket, key = _s3_object(table)
    with pytest.raises(TableError, match="taken over by another writer"):
        with hold(table, ttl=2.0):
            client.put_object(Bucket=bucket, Key=key, Body=b'{"host": "h", "pid": 1, "token": "t", "since": "s"}')
            time.sleep(0.9)  # the next renewal (every 0.5 s) finds it taken
            with pytest.raises(TableError, match="not committing"):
                check_held()
    assert json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())["token"] == "t"  # theirs, left alone


def test_an_s3_lease_that_cannot_be_renewed_stops_the_commit() -> None:
    """The S3 service goes away while the lease is held: after half its time to live without a
    confirmed renewal the holder refuses to commit (a waiter could take it over after a whole one)."""
    with S3Server() as down:
        table = f"s3://{down.bucket}/down/ds"
        with pytest.raises(TableError, match="could not be renewed"):
            with hold(table, ttl=1.0):
                down.__exit__()  # stops the server
                check_held()  # renewed 0.25 s ago at most: still held
                time.sleep(0.8)
                with pytest.raises(TableError, match="not committing"):
                    check_held()


def test_a_killed_holder_of_a_local_lease_releases_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = str(tmp_path / "tables" / "ds")
    code = (
        "import time, pathlib\nfrom lerobot_assets.core.table.lease import hold\n"
        f"with hold({table!r}):\n    pathlib.Path({str(tmp_path / 'held')!r}).touch()\n    time.sleep(600)\n"
    )
    holder = _holding(code, tmp_path / "held")
    caplog.set_level(logging.INFO, logger="lerobot_assets.core.table.lease")
    threading.Timer(1.0, os.kill, (holder.pid, signal.SIGKILL)).start()
    started = time.monotonic()
    with hold(table):
        waited = time.monotonic() - started
    holder.wait(10)
    assert 0.9 <= waited < 10
    assert f"held by pid {holder.pid} on host {socket.gethostname()}" in caplog.text


def test_a_worker_forked_while_a_local_lease_is_held_does_not_keep_it(tmp_path: Path) -> None:
    """An ``flock`` lasts while any copy of its file is open: a forked child must close its copy."""
    table = str(tmp_path / "tables" / "ds")
    with hold(table):
        child = os.fork()
        if child == 0:  # the worker: holds nothing of its parent's, lives on
            time.sleep(5)
            os._exit(0)
    started = time.monotonic()
    with hold(table):
        waited = time.monotonic() - started
    os.waitpid(child, 0)
    assert waited < 2
