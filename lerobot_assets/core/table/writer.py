"""One writer per run of episodes: it holds the table's lease from the run's first write, serializes
the threads' writes and commits once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, TypeVar

import deeplake
import numpy as np

from lerobot_assets.core.lerobot.meta import DatasetMeta
from lerobot_assets.core.table.episodes import replace_episode
from lerobot_assets.core.table.lease import check_held, hold
from lerobot_assets.core.table.metadata import set_table_metadata
from lerobot_assets.core.table.schema import open_table, refresh_indexes

T = TypeVar("T")


class RunWriter:
    """The table writes of one run of episodes, committed as one version.

    Every open of a Deeplake 4.7 table replays its whole version log (~0.2 ms per commit, more with
    large log entries), and a commit's own cost grows with the commits before it, so one commit per
    episode made every open, ``info``, replace and loader grow with the number of episodes written
    (docs/benchmarks.md, "Table size"). A run's episodes are decoded in parallel threads; their
    writes go, one at a time, through this writer's own thread, which takes the table's write
    lease at the run's first write and keeps it until :meth:`commit`. Nothing is visible before
    the commit, and a process that dies before it leaves the previous version (Deeplake drops
    uncommitted writes); the caller records results only after it. Deeplake streams appended
    chunks to storage, so uncommitted rows do not accumulate in memory (measured: 30 uncommitted
    episodes of 3x200 480x640 JPEGs, 169 MB RSS; committing each, 262-347 MB).

    A write that raises part-way cannot be undone on its own: the run's uncommitted writes are
    rolled back with it, and the episodes concerned are listed in :attr:`lost`.
    """

    def __init__(self, url: str, image_format: str, metadata: Mapping[str, Any]) -> None:
        self.url, self._image_format, self._metadata = url, image_format, dict(metadata)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="table-writer")
        self._lease, self._leased = ExitStack(), False
        self.ds: deeplake.Dataset | None = None
        self._episodes: np.ndarray | None = None  # the episode_index column as self.ds sees it
        self._pending: list[int] = []
        self._replaced = False  # rows were deleted since the last commit: the indexes need recreating
        #: Episodes whose written rows were rolled back because a later write of the run failed.
        self.lost: list[int] = []

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._thread.submit(self._close).result()
        finally:
            self._thread.shutdown()

    def replace(
        self,
        meta: DatasetMeta,
        episode_index: int,
        rows: Mapping[str, Any],
        data_version: str,
        prepare: Callable[[deeplake.Dataset, dict[str, Any]], tuple[dict[str, Any], T]],
    ) -> tuple[int, int, T]:
        """Replace one episode's rows (``prepare(ds, rows)`` first gives the rows to write and a value
        returned with the counts), in turn with the run's other episodes; not committed yet.
        Returns ``(rows_deleted, rows_written, prepared value)``."""
        return self._thread.submit(self._replace, meta, episode_index, rows, data_version, prepare).result()

    def _replace(self, meta: DatasetMeta, episode_index: int, rows: Mapping[str, Any], data_version: str,
                 prepare: Callable[[deeplake.Dataset, dict[str, Any]], tuple[dict[str, Any], T]]) -> tuple[int, int, T]:
        if not self._leased:
            self._lease.enter_context(hold(self.url))
            self._leased = True
        if self.ds is None:  # at the first write, and again after a rollback (which undid what the open added)
            self.ds = open_table(self.url, meta, self._image_format)
        try:
            set_table_metadata(self.ds, **self._metadata)
            prepared, value = prepare(self.ds, dict(rows))
            (deleted, written), self._episodes = replace_episode(
                self.ds, episode_index, prepared, data_version, self._episodes)
        except BaseException:
            self.ds.rollback()
            self.lost += [*self._pending, episode_index]
            self._pending, self._episodes, self.ds = [], None, None
            raise
        self._pending.append(episode_index)
        self._replaced |= bool(deleted)
        return deleted, written, value

    @property
    def pending(self) -> list[int]:
        """The episodes written since the last commit (to name them in its message)."""
        return list(self._pending)

    def commit(self, message: str) -> tuple[list[int], str | None]:
        """Commit the episodes written since the last commit in one version, then release the lease;
        return them and the version committed (None when nothing was written). When rows were replaced, the indexes are recreated in the same commit
        (Deeplake's miss rows after deletes: :func:`refresh_indexes`)."""
        return self._thread.submit(self._commit, message).result()

    def _commit(self, message: str) -> tuple[list[int], str | None]:
        done, self._pending, version = self._pending, [], None
        if done and self.ds is not None:
            try:
                if self._replaced:
                    refreshed = refresh_indexes(self.ds)
                    message += f"; indexes of {refreshed} recreated" if refreshed else ""
                check_held()
                self.ds.commit(message)
                version = self.ds.version
            except BaseException:
                self.ds.rollback()
                self.lost += done
                raise
        self._replaced = False
        self._lease.close()
        self._leased = False
        return done, version

    def _close(self) -> None:
        if self.ds is not None and self._pending:  # a run that ends without its commit
            self.ds.rollback()
            self._pending = []
        self._lease.close()
        self._leased = False
