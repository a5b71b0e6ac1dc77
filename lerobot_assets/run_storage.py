"""Dagster's SQLite run storage with one engine that keeps its connections open.

``SqliteRunStorage`` creates an engine and opens a SQLite connection for every statement (about 35
per episode run), and inspects the runs table's columns whenever it checks whether a migration
added one (several times per run). Here one engine keeps its connections open
(:func:`lerobot_assets.event_log.pooled_engine`, also for its commit mode) and a column or table
once found is remembered: Dagster's migrations only ever add them. Measured on runs that only
read an episode's telemetry: ~20 ms less CPU per run, ~50 ms with the event log's commit mode.
The file and its schema are Dagster's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dagster._core.storage.runs import SqliteRunStorage
from sqlalchemy.engine import Connection

from lerobot_assets.event_log import forget_connections_after_fork, pooled_engine


class PooledSqliteRunStorage(SqliteRunStorage):
    """``SqliteRunStorage`` with one long-lived engine and remembered schema checks."""

    def __init__(self, conn_string: str, inst_data: Any = None) -> None:
        self._engine = pooled_engine(conn_string)
        self._present: set[str] = set()
        forget_connections_after_fork(self)
        super().__init__(conn_string, inst_data)

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> PooledSqliteRunStorage:
        return cls.from_local(inst_data=inst_data, **config_value)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

    def _forget_connections(self) -> None:
        """In a forked child: the parent's open connections are not ours to use (or close)."""
        self._engine.dispose(close=False)

    def dispose(self) -> None:
        super().dispose()
        self._engine.dispose()

    def _remembered(self, name: str, check: Callable[[], bool]) -> bool:
        if name not in self._present and check():
            self._present.add(name)
        return name in self._present

    def has_run_stats_index_cols(self) -> bool:
        return self._remembered("run_stats_index_cols", super().has_run_stats_index_cols)

    def has_bulk_actions_selector_cols(self) -> bool:
        return self._remembered("bulk_actions_selector_cols", super().has_bulk_actions_selector_cols)

    def has_backfill_id_column(self) -> bool:
        return self._remembered("backfill_id_column", super().has_backfill_id_column)

    def has_bulk_action_job_name_column(self) -> bool:
        return self._remembered("bulk_action_job_name_column", super().has_bulk_action_job_name_column)

    def has_backfill_tags_table(self) -> bool:
        return self._remembered("backfill_tags_table", super().has_backfill_tags_table)
