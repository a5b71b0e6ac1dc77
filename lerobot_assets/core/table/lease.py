"""One writer at a time per table, on any machine: a lease kept in the table's own storage.

Writers of one table may run in processes with different homes on different machines, so the
lease lives beside the table, under the tables root's reserved ``.leases/`` folder (dataset names
never start with a dot)::

    <root>/<name>            the Deeplake table
    <root>/.leases/<name>    its lease: who holds it (host, pid, a random token) and until when
    <root>/.leases/<name>#events   held by a run while it records its events (see :func:`recording`)

- ``s3://`` tables: the lease is an object created with a conditional PUT (``If-None-Match: *``), so
  of two writers exactly one creates it. The holder renews it (``If-Match`` on its ETag) every
  quarter of its time to live from a heartbeat thread and deletes it (``If-Match``) when done. A
  waiter that sees the same lease content for a whole time to live (the longer of its own and the
  holder's), measured on its own clock (so machines' clocks need not agree), or whose holder is a
  dead process on the waiter's own host (same boot and PID namespace), takes it over with a
  conditional PUT on the ETag it saw: of several waiters one wins. A holder without a confirmed
  renewal for half its time to live stops committing.
- local paths: the lease is a file under an exclusive ``flock``, which the kernel releases when its
  holder dies, so no expiry is needed. Machines sharing a local path must share it over a file
  system with working ``flock`` (NFSv4 does); otherwise put the tables on S3.
- other URLs (``gs://``...): a lock file in this machine's temporary directory, which excludes
  writers on this machine only (logged once as a warning).

Credentials and the endpoint come from :func:`lerobot_assets.core.table.access.storage_creds`; they are never
logged or written to the lease.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from lerobot_assets.core.errors import TableError
from lerobot_assets.core.storage import s3_client_for

log = logging.getLogger(__name__)

LEASE_FOLDER = ".leases"
#: Seconds a lease stays valid without renewal; the holder renews it every quarter of that.
DEFAULT_TTL = 60.0
_held = threading.local()  # .leases: url -> [lease, depth] held by this thread
_open_fds: set[int] = set()  # of the local leases held in this process


def lease_url(table: str) -> str:
    """Where the lease of the table at ``table`` lives: ``<root>/.leases/<name>``."""
    root, _, name = str(table).rstrip("/").rpartition("/")
    return f"{root}/{LEASE_FOLDER}/{name}"


@contextmanager
def hold(table: str, ttl: float = DEFAULT_TTL) -> Iterator[None]:
    """Hold the lease of the table at ``table`` for the block; wait (logging its holder) while
    another writer holds it. Re-entrant within a thread.

    Raises :class:`TableError` at the end of the block if the lease was lost meanwhile (renewal
    impossible for a whole time to live), because another writer may then have written too.
    """
    leases: dict[str, list[Any]] = _held.__dict__.setdefault("leases", {})
    if table in leases:
        leases[table][1] += 1
        try:
            yield
        finally:
            leases[table][1] -= 1
        return
    lease = _lease_for(table, ttl)
    lease.acquire()
    leases[table] = [lease, 1]
    try:
        yield
    finally:
        del leases[table]
        lease.release()
    if lease.lost:
        raise TableError(f"{lease.lost}; another writer may have written the table at {table} meanwhile: run again")


def recording(table: str) -> AbstractContextManager[None]:
    """The lease a run of the table's dataset holds while it records its events in Dagster
    (``<root>/.leases/<name>#events``, apart from the write lease: writers do not wait for it)."""
    return hold(f"{table}#events")


def check_held() -> None:
    """Raise :class:`TableError` if a lease this thread holds was lost: called before a commit."""
    for table, (lease, _) in getattr(_held, "leases", {}).items():
        if lease.lost:
            raise TableError(f"{lease.lost}; not committing to the table at {table}: run again")


def _owner(token: str, since: float, ttl: float | None = None, renewals: int = 0) -> bytes:
    """The lease's content: its holder, since when it holds it and (S3) its time to live and until when
    it holds unrenewed."""
    owner: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "pids": _pid_space(), "token": token,
                             "since": _utc(since)}
    if ttl is not None:
        owner.update(ttl=ttl, renewals=renewals, expires=_utc(time.time() + ttl))
    return json.dumps(owner).encode()


def _pid_space() -> str:
    """Which processes a pid names here: this boot's id and this PID namespace ("" where unknown).

    Containers can share a host name (``--network host``) but not their processes: a pid is only
    checked for life when the lease was written from the same boot and PID namespace.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _ttl_of(body: bytes) -> float:
    """The time to live the lease's holder renews it within (0 if unknown)."""
    try:
        return float(json.loads(body).get("ttl", 0))
    except (ValueError, TypeError, AttributeError):
        return 0.0


def _log_wait(table: str, body: bytes) -> None:
    """Say who holds the lease being waited for: at INFO for another process (a user may wonder
    why nothing moves), at DEBUG for another thread of this one (episodes of a run take turns)."""
    try:
        owner = json.loads(body)
        ours = owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()
    except (ValueError, AttributeError):
        ours = False
    log.log(logging.DEBUG if ours else logging.INFO, "waiting for the write lease of %s, held by %s", table, describe_holder(body))


def describe_holder(body: bytes) -> str:
    """``pid 123 on host h since 2026-...Z`` from a lease's content."""
    try:
        owner = json.loads(body)
        return f"pid {owner['pid']} on host {owner['host']} since {owner['since']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown holder"


def _is_dead_local(body: bytes) -> bool:
    """True when the lease's holder is a process of this host (same boot, same PID namespace) that no
    longer exists."""
    try:
        owner = json.loads(body)
        here = _pid_space()
        if owner["host"] != socket.gethostname() or not here or owner.get("pids") != here:
            return False
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, PermissionError):
        return False
    return False


class _FileLease:
    """An exclusive ``flock`` on a lease file, its holder written inside."""

    lost = ""

    def __init__(self, path: Path, table: str) -> None:
        self.path, self.table, self.fd = path, table, -1

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        _open_fds.add(self.fd)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log_wait(self.table, os.pread(self.fd, 4096, 0))
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, _owner(secrets.token_hex(8), time.time()), 0)

    def release(self) -> None:
        os.ftruncate(self.fd, 0)
        _open_fds.discard(self.fd)
        os.close(self.fd)  # releases the flock


class _S3Lease:
    """A lease object on S3, created, renewed, taken over and deleted by conditional requests."""

    def __init__(self, table: str, ttl: float) -> None:
        bucket, _, key = lease_url(table).removeprefix("s3://").partition("/")
        self.table, self.bucket, self.key, self.ttl = table, bucket, key, ttl
        self.client = s3_client_for(table)
        self.token = secrets.token_hex(8)
        self.since = 0.0
        self.etag = ""
        self._lost = ""
        self._renewed = 0.0  # time.monotonic() of the last write of the lease that S3 confirmed
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> None:
        seen, since, logged = "", time.monotonic(), ""
        while True:
            self.since = time.time()
            if self._put(IfNoneMatch="*"):
                break
            found = self._get()
            if found is None:
                continue  # released meanwhile
            body, etag = found
            if etag != seen:
                seen, since = etag, time.monotonic()
            holder = describe_holder(body)
            if time.monotonic() - since >= max(self.ttl, _ttl_of(body)) or _is_dead_local(body):
                if self._put(IfMatch=etag):
                    log.warning("took over the write lease of %s from %s: not renewed for %.0f s or its process is gone",
                                self.table, holder, time.monotonic() - since)
                    break
                continue
            if holder != logged:
                logged = holder
                _log_wait(self.table, body)
            time.sleep(min(1.0, self.ttl / 10) * random.uniform(0.5, 1.5))
        self._heartbeat = threading.Thread(target=self._renew, name=f"lease {self.key}", daemon=True)
        self._heartbeat.start()

    @property
    def lost(self) -> str:
        """Why this holder may no longer write ("" while it holds the lease). Without a confirmed
        renewal for half its time to live it counts as lost, well before a waiter (who waits a whole
        time to live from when it saw the last renewal) can take it over."""
        if not self._lost and time.monotonic() - self._renewed > self.ttl / 2:
            return f"the write lease of {self.table} could not be renewed for {self.ttl / 2:.1f} s"
        return self._lost

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self.lost:
            return  # another writer's now, or soon
        try:
            self._request("delete_object", IfMatch=self.etag)
        except Exception as error:  # what was written under it stays written; the lease expires
            log.warning("could not release the write lease of %s (%s): others take it over in %.0f s",
                        self.table, type(error).__name__, self.ttl)

    def _renew(self) -> None:
        count = 0
        while not self._stop.wait(self.ttl / 4):
            count += 1
            try:
                if self._put(renewals=count, IfMatch=self.etag):
                    continue
                self._lost = f"the write lease of {self.table} was taken over by another writer"
            except Exception as error:  # the network: retry at the next beat while the lease lasts
                log.warning("could not renew the write lease of %s: %s", self.table, type(error).__name__)
                if not self.lost:
                    continue
            log.error("%s", self.lost)
            return

    def _put(self, renewals: int = 0, **condition: str) -> bool:
        """PUT the lease with ``condition``; True if it was written (its ETag kept), False if the condition failed."""
        response = self._request("put_object", Body=_owner(self.token, self.since, self.ttl, renewals), **condition)
        if response is None:
            return False
        self.etag, self._renewed = response["ETag"], time.monotonic()
        return True

    def _get(self) -> tuple[bytes, str] | None:
        response = self._request("get_object")
        return None if response is None else (response["Body"].read(), response["ETag"])

    def _request(self, operation: str, **kwargs: Any) -> dict[str, Any] | None:
        """The response, or None when the object is missing or a condition failed (another writer's move)."""
        from botocore.exceptions import ClientError

        try:
            return getattr(self.client, operation)(Bucket=self.bucket, Key=self.key, **kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "412", "409"):
                return None
            raise TableError(f"the write lease {self.key!r} in bucket {self.bucket!r}: S3 answered {code}") from None


_warned: set[str] = set()


def _lease_for(table: str, ttl: float) -> _FileLease | _S3Lease:
    if table.startswith("s3://"):
        return _S3Lease(table, ttl)
    if "://" not in table:
        return _FileLease(Path(lease_url(table)), table)
    scheme = table.split("://")[0]
    if scheme not in _warned:
        _warned.add(scheme)
        log.warning("writes to %s:// tables are serialized on this machine only: use s3:// or a local path "
                    "to run writers on several machines", scheme)
    digest = hashlib.sha256(table.encode()).hexdigest()[:16]
    return _FileLease(Path(tempfile.gettempdir()) / "lerobot-assets-leases" / digest, table)


def _forget_in_child() -> None:
    """A forked worker holds none of its parent's leases: closing its copies of their files keeps
    it from holding a local lease once the parent releases it (an ``flock`` lasts while any copy of
    its file is open), and it renews no S3 lease (no heartbeat thread survives a fork)."""
    global _held
    _held = threading.local()
    for fd in _open_fds:
        os.close(fd)
    _open_fds.clear()


os.register_at_fork(after_in_child=_forget_in_child)
