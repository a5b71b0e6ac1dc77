"""Costs that must not grow with the table: the per-commit metadata that made ingest collapse, one commit per run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import deeplake
import numpy as np
import pytest

from lerobot_assets.core.lerobot.meta import read_dataset
from lerobot_assets.core.lerobot.stats import aggregate_stats, episode_stats, feature_stats, stats_from_json
from lerobot_assets.core.media.codec import encode_image
from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.core.table.episode_stats import STATS_COLUMN, load_stats, stats_cells
from lerobot_assets.core.table.episodes import episode_ranges
from lerobot_assets.core.table.metadata import RUN_METADATA_COLUMN, episode_versions, set_table_metadata, table_metadata
from lerobot_assets.core.table.writer import RunWriter
from lerobot_assets.runtime.commands import info, ingest
from lerobot_assets.testing.synthetic import generate_dataset, render_frame, table_rows

REVISION = "a0afa88f7ef3f540eaef5001b31aed9d3d862a5e54da571a7b3f6236c43ad1ad"

_OPEN = """
import json, sys, time
import deeplake
from lerobot_assets.core.table.metadata import table_metadata

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


def _episode(meta, index: int, frames: int) -> dict:
    """Rows of a generated episode (one camera, 2-DOF), with its stats, as an episode run writes them."""
    rows = table_rows(index, frames, camera="observation.images.front", image=encode_image(render_frame(index, 0, 48, 64)),
                      fps=meta.fps, state_dim=2)
    values = {k: v for k, v in rows.items() if k != "observation.images.front"}
    return {**rows, STATS_COLUMN: stats_cells(episode_stats(values), frames)}


def test_a_run_of_episodes_is_one_commit_and_a_failed_write_undoes_only_the_uncommitted(tmp_path: Path) -> None:
    """One version per run (every open replays the version log), stats read back from the rows, and a
    write that fails part-way rolls back the run's uncommitted writes, naming them, never a commit."""
    source = generate_dataset(tmp_path / "src", episode_lengths=(2,), cameras=("front",), height=48, width=64, state_dim=2)
    meta = read_dataset(source, name="robot")
    url = str(tmp_path / "table")
    keep = lambda ds, rows: (rows, None)  # noqa: E731  (no labels to re-apply)
    with RunWriter(url, "jpeg", {"revision": "a" * 40}) as writer:
        for index in range(4):
            writer.replace(meta, index, _episode(meta, index, 5 + index), f"v{index}", keep)
        assert writer.commit("ingest robot episodes 0-3") == ([0, 1, 2, 3], open_read_only(url).version)
    ds = open_read_only(url)
    assert [c.message for c in ds.history][-2:] == ["create table for dataset robot", "ingest robot episodes 0-3"]
    assert episode_ranges(ds) == {0: range(0, 5), 1: range(5, 11), 2: range(11, 18), 3: range(18, 26)}
    assert episode_versions(ds) == {i: f"v{i}" for i in range(4)}
    stored = load_stats(ds, {1: 5, 2: 11})
    expected = aggregate_stats([stats_from_json(json.loads(_episode(meta, i, 5 + i)[STATS_COLUMN][0])) for i in (1, 2)])
    for name, value in expected["observation.state"].items():
        assert np.array_equal(stored["observation.state"][name], value), name
    committed = ds.version

    def broken(ds, rows):
        return {**rows, "frame_index": rows["frame_index"][:-1]}, None  # columns of unequal length: append refuses

    with RunWriter(url, "jpeg", {"revision": "b" * 40}) as writer:
        writer.replace(meta, 1, _episode(meta, 1, 3), "v1b", keep)
        with pytest.raises(Exception):
            writer.replace(meta, 2, _episode(meta, 2, 4), "v2b", broken)
        writer.replace(meta, 3, _episode(meta, 3, 2), "v3b", keep)  # the run goes on after the rollback
        assert writer.lost == [1, 2]
        assert writer.commit("ingest robot episodes [3]") == ([3], open_read_only(url).version)
    ds = open_read_only(url)
    assert ds.history[len(ds.history) - 2].id == committed
    assert episode_versions(ds) == {0: "v0", 1: "v1", 2: "v2", 3: "v3b"}
    assert {e: len(r) for e, r in episode_ranges(ds).items()} == {0: 5, 1: 6, 2: 7, 3: 2}
    assert table_metadata(ds)["revision"] == "b" * 40


def test_a_run_that_ends_without_its_commit_leaves_the_table_as_it_was(tmp_path: Path) -> None:
    source = generate_dataset(tmp_path / "src", episode_lengths=(2,), cameras=("front",), height=48, width=64, state_dim=2)
    meta = read_dataset(source, name="robot")
    url = str(tmp_path / "table")
    keep = lambda ds, rows: (rows, None)  # noqa: E731
    with RunWriter(url, "jpeg", {}) as writer:
        writer.replace(meta, 0, _episode(meta, 0, 5), "v0", keep)
        writer.commit("episode 0")
    version = open_read_only(url).version
    with pytest.raises(RuntimeError), RunWriter(url, "jpeg", {}) as writer:
        writer.replace(meta, 1, _episode(meta, 1, 5), "v1", keep)
        raise RuntimeError("the run stops before its commit")
    with RunWriter(url, "jpeg", {}) as writer:  # the next run in this process sees none of it (the handle is kept)
        writer.replace(meta, 2, _episode(meta, 2, 3), "v2", keep)
        writer.commit("episode 2")
    ds = open_read_only(url)
    assert ds.history[len(ds.history) - 2].id == version
    assert episode_versions(ds) == {0: "v0", 2: "v2"} and sorted(episode_ranges(ds)) == [0, 2]
