"""Costs that must not grow with the table: the per-commit metadata that made ingest collapse, episode lookups."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import deeplake
import numpy as np

from lerobot_assets.launch import info, ingest
from lerobot_assets.stats import feature_stats
from lerobot_assets.table import RUN_METADATA_COLUMN, open_read_only, set_table_metadata, table_metadata

REVISION = "a0afa88f7ef3f540eaef5001b31aed9d3d862a5e54da571a7b3f6236c43ad1ad"

_OPEN = """
import json, sys, time
import deeplake
from lerobot_assets.table import table_metadata

def status(field):
    return next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith(field))

# VmHWM, not ru_maxrss (which Linux carries over from the forking parent, pytest, across exec),
# reset to the current RSS first, so only the open's own peak counts.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
started = time.perf_counter()
ds = deeplake.open_read_only(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - started, "extra_mb": status("VmHWM:") - before,
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
    assert opened["extra_mb"] < 100, opened
    assert opened["metadata"] == {"dataset": "p", "fps": 10.0, "cameras": ["observation.images.image"],
                                  "source": "/data/some/where/pusht", "revision": "b" * 40}
    # recorded with the rows: the tag still shows the revision its rows came from
    assert table_metadata(deeplake.open_read_only(url).tags["first"].open())["revision"] == REVISION


def test_episode_stats_of_high_episode_numbers() -> None:
    """A constant column above ~256 (``episode_index`` of episode 300) has a +-1e-10 histogram range
    narrower than 5000 float64 steps; its stats are LeRobot's (explicit bin edges), not an error."""
    stats = feature_stats(np.full(80, 300, dtype=np.int64))
    assert stats["mean"].tolist() == stats["min"].tolist() == stats["max"].tolist() == [300]
    for name in ("q01", "q10", "q50", "q90", "q99"):
        assert 300 - 1e-9 <= float(stats[name][0]) <= 300 + 1e-9, (name, stats[name])


def test_ingest_and_info_report_the_tables_bytes_against_the_source(official_dataset: Path, tmp_path: Path) -> None:
    result = ingest(str(official_dataset), name="small", home=tmp_path / "home", workers=1)
    shown = info("small", home=tmp_path / "home")
    on_disk = sum(f.stat().st_size for f in Path(result["table"]).rglob("*") if f.is_file())
    source = sum(f.stat().st_size for f in official_dataset.rglob("*") if f.is_file())
    cameras = len([c for c in open_read_only(result["table"]).schema.columns if str(c.dtype).startswith("kind=image")])
    for report in (result, shown):
        assert report["table_bytes"] == on_disk and report["source_bytes"] == source
        assert report["bytes_per_camera_frame"] == round(on_disk / (result["rows"] * cameras))
        assert report["table_to_source"] == round(on_disk / source, 2)
