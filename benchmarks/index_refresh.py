"""What keeping the indexes exact costs: recreating them after in-place writes and deletions.

    .venv/bin/python benchmarks/index_refresh.py [--rows 200000]   # ~20 s

Deeplake 4.7 leaves its indexes stale after values set in place (relabel, merge) and after row
deletions (a re-ingest replacing an episode), so ``table.refresh_indexes`` drops and recreates
them: the ``task`` text index after a relabel or merge that changed ``task``, every index once
after an ingest that replaced episodes. Baseline, in the same run on the same table: the index
build ``training_snapshot`` does before tagging (``table.build_indexes``, a fresh table's first
build). The table holds the indexed columns of an ingested table (``episode_index``, ``task`` with
three texts, a 14-wide ``observation.state`` embedding), 500-frame episodes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import deeplake
import numpy as np

from lerobot_assets.core.table.schema import _INDEXES, EMBEDDING_KEY, build_indexes, refresh_indexes

TASKS = ["Pick up the shrimp", "Wipe the table", "Open the drawer"]


def _timed(step) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="index-refresh-"))
    try:
        url = str(root / "table")
        ds = deeplake.create(url)
        ds.add_column("episode_index", deeplake.types.Int64())
        ds.add_column("task", deeplake.types.Text())
        ds.add_column(EMBEDDING_KEY, deeplake.types.Embedding(14))
        for name, index in _INDEXES.items():
            ds[name].create_index(index)
        rows = args.rows
        ds.append({
            "episode_index": np.arange(rows) // 500,
            "task": [TASKS[i // 500 % 3] for i in range(rows)],
            EMBEDDING_KEY: np.random.default_rng(0).random((rows, 14), dtype=np.float32),
        })
        ds.commit("rows")
        build = _timed(lambda: build_indexes(url))

        ds = deeplake.open(url)
        ds["task"][500:1000] = ["Clean the counter"] * 500  # one episode relabelled in place, as a merge does
        task = _timed(lambda: (refresh_indexes(ds, ["task"]), ds.commit("relabel")))
        ds = deeplake.open(url)
        for offset in range(1499, 999, -1):  # one episode's rows deleted, as a re-ingest does
            ds.delete(offset)
        every = _timed(lambda: (refresh_indexes(ds), ds.commit("re-ingest")))
        check = deeplake.open_read_only(url)
        found = len(check.query("SELECT * WHERE CONTAINS(task, 'counter')"))
        print(f"rows {rows}: snapshot index build (baseline) {build:.2f} s")
        print(f"after a relabel or merge: task index recreated + commit {task:.2f} s = {task / build:.2f}x the baseline")
        print(f"after a re-ingest: every index recreated + commit {every:.2f} s = {every / build:.2f}x the baseline")
        print(f"CONTAINS(task, 'counter'): {found} rows (500 expected)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
