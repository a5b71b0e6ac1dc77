"""Dagster's SQLite event log, made cheaper per run for the many short runs an ingest launches.

Dagster's ``SqliteEventLogStorage`` keeps one SQLite file per run plus an index file, and costs
more per run than an episode's bookkeeping needs:

- it creates and disposes a SQLAlchemy engine, and opens and closes a SQLite connection, for every
  statement (about 140 per episode run): every event recompiles its SQL, re-reads the schema
  and, closing the file's last connection, checkpoints its write-ahead log, about 0.5 s of a
  run. This subclass keeps one engine per database file with a pool of open connections (WAL
  mode lets other processes read and write meanwhile; SQLite checkpoints as the log grows);
- it opens a fresh engine to ask whether a table exists before every dynamic-partition lookup
  (dozens per run); here the answer is kept once a table is there;
- to create each run's file it parses Dagster's ~100 alembic migration scripts twice (to read the
  head revision, then to stamp it): about 0.5 CPU-seconds per run. Here the parsed scripts are
  kept per process, and a new run file is a copy of an empty one that each process creates and
  stamps once through alembic's own ``MigrationContext`` (creating the tables costs ~70 ms a run,
  the copy ~1 ms); anything unusual (an older schema, a concurrent creator) goes to Dagster's own
  code.

The files and their schema are Dagster's own: ``dagster dev`` with the default storage reads the
same instance.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy.exc as db_exc
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dagster._core.storage.event_log.sqlite import sqlite_event_log
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata
from dagster._core.storage.sql import get_alembic_config
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, QueuePool


#: Engines kept for run databases besides the index: a worker executes one run at a time.
_RUN_ENGINES_KEPT = 2


def pooled_engine(conn_string: str) -> Engine:
    """An engine keeping its SQLite connections open, most recently used first (so few stay open).

    Its connections commit with ``synchronous=NORMAL``: in WAL mode a commit then writes the log
    without waiting for the disk (~0.4 ms less per commit, 70 commits per episode run). A process
    that crashes loses nothing; a power cut may lose the last commits, never corrupting the file:
    at worst the last runs' events, and the next ingest re-runs their episodes.
    """
    engine = create_engine(
        conn_string,
        poolclass=QueuePool,
        pool_use_lifo=True,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
    )
    event.listen(engine, "connect", lambda connection, _: connection.execute("PRAGMA synchronous=NORMAL"))
    return engine


@functools.cache
def _migration_scripts() -> ScriptDirectory:
    """Dagster's alembic scripts for the SQLite event log, parsed once per process."""
    return ScriptDirectory.from_config(get_alembic_config(sqlite_event_log.__file__))


def _create_at_head(engine: Engine) -> None:
    """Dagster's event-log tables in an empty database, in WAL mode, stamped with the head revision."""
    with engine.connect() as conn:
        SqlEventLogStorageMetadata.create_all(conn)
        conn.execute(text("PRAGMA journal_mode=WAL;"))
        MigrationContext.configure(conn).stamp(_migration_scripts(), "head")
        conn.commit()


@functools.cache
def _empty_run_file() -> bytes:
    """The bytes of an empty run database (WAL mode is recorded in the file's header), built once per process."""
    with tempfile.TemporaryDirectory(prefix="lerobot-assets-") as tmp:
        engine = create_engine(f"sqlite:///{os.path.join(tmp, 'run.db')}", poolclass=NullPool)
        _create_at_head(engine)
        engine.dispose()  # closing the last connection checkpoints the write-ahead log into the file
        with open(os.path.join(tmp, "run.db"), "rb") as file:
            return file.read()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with one long-lived engine per shard, cheap run shards and table checks."""

    def __init__(self, base_dir: str, inst_data: Any = None) -> None:
        self._engines: dict[str, Engine] = {}
        self._engines_lock = threading.Lock()
        self._tables: set[str] = set()
        forget_connections_after_fork(self)
        super().__init__(base_dir, inst_data)

    def _forget_connections(self) -> None:
        """In a forked child: the parent's open connections are not ours to use (or close)."""
        self._engines_lock = threading.Lock()
        for engine in self._engines.values():
            engine.dispose(close=False)
        self._engines.clear()

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _initdb(self, engine: Engine, for_index_shard: bool = False) -> None:
        """Create a shard at the head schema, or leave one at head alone, without re-parsing the scripts."""
        try:
            with engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
                empty = current is None and not inspect(conn).get_table_names()
            if current == _migration_scripts().as_revision_number("head"):
                return
            if empty:
                _create_at_head(engine)
                return
        except (db_exc.DatabaseError, sqlite3.DatabaseError, sqlite3.OperationalError):
            pass  # e.g. another process creating the same shard: Dagster's code retries
        super()._initdb(engine, for_index_shard)

    def _engine(self, shard: str) -> Engine:
        """The shard's engine; engines of all but the latest few runs are disposed, so a worker that
        executes hundreds of runs does not keep hundreds of engines (and their statement caches)."""
        with self._engines_lock:
            engine = self._engines.pop(shard, None) or pooled_engine(self.conn_string_for_shard(shard))
            self._engines[shard] = engine  # most recently used last
            runs = [name for name in self._engines if name != INDEX_SHARD_NAME]
            for name in runs[:-_RUN_ENGINES_KEPT]:
                self._engines.pop(name).dispose()
            return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                if shard != INDEX_SHARD_NAME:
                    self._copy_empty_run_file(shard)
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _copy_empty_run_file(self, shard: str) -> None:
        """Create a new run's file as a copy of the empty one; an existing file is left alone."""
        path = self.path_for_shard(shard)
        if os.path.exists(path):
            return
        with tempfile.NamedTemporaryFile(dir=self._base_dir, prefix=f".{shard}-", suffix=".tmp") as file:
            file.write(_empty_run_file())
            file.flush()
            try:
                os.link(file.name, path)  # atomic, and never over a file another process just created
            except FileExistsError:
                pass

    def has_table(self, table_name: str) -> bool:
        """Whether the index has ``table_name``, asked once per table: Dagster checks before every
        dynamic-partition lookup, and its migrations only ever add tables."""
        if table_name not in self._tables:
            with self._engine(INDEX_SHARD_NAME).connect() as conn:
                if conn.dialect.has_table(conn, table_name):
                    self._tables.add(table_name)
        return table_name in self._tables

    def dispose(self) -> None:
        super().dispose()
        with self._engines_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


_live: weakref.WeakSet[Any] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [storage._forget_connections() for storage in _live])


def forget_connections_after_fork(storage: Any) -> None:
    """Call ``storage._forget_connections()`` in every forked child while ``storage`` lives: open
    SQLite connections must not cross a fork."""
    _live.add(storage)
