"""Costs that must not grow with the table: the per-commit metadata that made ingest collapse, episode lookups."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import deeplake
import numpy as np

from lerobot_assets.table import RUN_METADATA_COLUMN, set_table_metadata, table_metadata

REVISION = "a0afa88f7ef3f540eaef5001b31aed9d3d862a5e54da571a7b3f6236c43ad1ad"

_OPEN = """
import json, re, sys, time
import deeplake
from lerobot_assets.table import table_metadata
started = time.perf_counter()
ds = deeplake.open_read_only(sys.argv[1])
seconds = time.perf_counter() - started
# VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak (here pytest's, which
# grows over a full run) across exec into the child's ru_maxrss, while VmHWM is this process's own.
peak_kb = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({"seconds": seconds, "rss_mb": peak_kb / 1024,
                  "metadata": table_metadata(ds)}))
"""


def test_ingest_metadata_on_every_commit_keeps_the_table_cheap_to_open(tmp_path: Path) -> None:
    """70 episode commits, each setting the ingest metadata as an episode run does: a fresh open stays
    small and the metadata intact. With the metadata written to the dataset's own log at every commit,
    Deeplake's checkpoint at the 64th entry made every open allocate 1.87 GB and read it back empty."""
    url = str(tmp_path / "table")
    ds = deeplake.create(url)
    ds.add_column(RUN_METADATA_COLUMN, deeplake.types.Int64())
    ds.metadata["lerobot_assets"] = json.dumps({"dataset": "p", "fps": 10.0, "cameras": ["observation.images.image"]})
    ds.commit("create table for dataset p")
    for episode in range(70):
        set_table_metadata(ds, source="/data/some/where/pusht", revision=REVISION)
        ds.append({RUN_METADATA_COLUMN: np.full(3, episode)})
        ds.commit(f"ingest p episode {episode} at revision {REVISION}")
    ds.tag("first")
    set_table_metadata(ds, revision="b" * 40)
    ds.commit("ingest p episode 0 at a new revision")

    opened = json.loads(subprocess.run([sys.executable, "-c", _OPEN, url], check=True, capture_output=True, text=True).stdout)
    assert opened["rss_mb"] < 400, opened
    assert opened["metadata"] == {"dataset": "p", "fps": 10.0, "cameras": ["observation.images.image"],
                                  "source": "/data/some/where/pusht", "revision": "b" * 40}
    # recorded with the rows: the tag still shows the revision its rows came from
    assert table_metadata(deeplake.open_read_only(url).tags["first"].open())["revision"] == REVISION
