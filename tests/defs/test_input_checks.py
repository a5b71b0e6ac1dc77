"""Inputs you can trust (issue 17): metadata checked against the files, value-level fingerprints,
table metadata kept current, and every quirk of real datasets named in one bounded line.

Every rejection leaves the existing table at the same version with the same rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lerobot_assets.core.errors import LeRobotAssetsError
from lerobot_assets.core.lerobot.stats import QUANTILES, episode_stats
from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.core.table.metadata import table_metadata
from lerobot_assets.runtime.commands import info, ingest, snapshot
from lerobot_assets.testing.synthetic import generate_dataset

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n"
)


def _generate(root: Path, **kwargs) -> Path:
    options = dict(episode_lengths=(8, 10, 9), cameras=("front",), codec="libx264", height=48, width=64,
                   episodes_per_file=1, files_per_chunk=10)
    return generate_dataset(root, **(options | kwargs))


def _edit_info(source: Path, **values) -> None:
    path = source / "meta" / "info.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | values))


def _state(home: Path, name: str) -> tuple[str, int, list[int]]:
    """The table's version, rows and episodes: what a rejected ingest must leave as it was."""
    now = info(name, home=home)
    return now["version"], now["rows"], now["episodes"]


def _refused(source: Path, home: Path, name: str, *fragments: str) -> str:
    before = _state(home, name)
    with pytest.raises(LeRobotAssetsError) as failure:
        ingest(str(source), name=name, home=home, workers=1)
    message = str(failure.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message and len(message) < 1500, message
    assert _state(home, name) == before
    return message


def _table_meta(home: Path, name: str) -> dict:
    return table_metadata(open_read_only(info(name, home=home)["table"]))


def test_fps_that_disagrees_with_timestamps_is_refused_and_table_metadata_follows_the_dataset(tmp_path: Path) -> None:
    from lerobot_assets.training import SnapshotDataset

    source, home = _generate(tmp_path / "src"), tmp_path / "home"
    ingest(str(source), name="r", home=home, workers=1)

    _edit_info(source, fps=15)  # 30 fps data labelled 15: LeRobot itself refuses it
    _refused(source, home, "r", "meta/info.json", "fps 15", "3 of 3 episodes", "0.033333 s apart (30 fps)")

    _edit_info(source, fps=30)  # fixed: nothing to rewrite
    fixed = ingest(str(source), name="r", home=home, workers=1)
    assert (fixed["changed"], fixed["unchanged"]) == ([], [0, 1, 2])
    assert _table_meta(home, "r")["fps"] == 30

    # Re-recorded at 15 fps under the same name: every episode is rewritten, and the table's
    # metadata (which SnapshotDataset takes fps from) says 15 now, not the 30 of its creation.
    shutil.rmtree(source)
    _generate(source, fps=15)
    again = ingest(str(source), name="r", home=home, workers=1)
    assert again["changed"] == [0, 1, 2]
    meta = _table_meta(home, "r")
    assert (meta["fps"], meta["revision"], meta["cameras"]) == (15, again["revision"], ["observation.images.front"])
    assert meta["features"]["observation.state"] == {"dtype": "float32", "shape": [6]}
    snapshot("r", tag="at15", home=home)
    data = SnapshotDataset("r", "at15", home=home, columns=["action"], delta_timestamps={"action": [-2 / 15, 0.0]})
    assert data.fps == 15
    item = data[5]  # episode 0, frame 5: the window holds frames 3 and 5
    actions = pq.read_table(source / "data/chunk-000/file-000.parquet")["action"].to_pylist()
    np.testing.assert_array_equal(item["action"].numpy(), np.array([actions[3], actions[5]], dtype=np.float32))


def test_one_episode_off_the_fps_fails_alone(tmp_path: Path) -> None:
    source, home = _generate(tmp_path / "src"), tmp_path / "home"
    ingest(str(source), name="f", home=home, workers=1)
    path = source / "data/chunk-000/file-001.parquet"
    table = pq.read_table(path)
    timestamps = table["timestamp"].to_numpy().copy()
    timestamps[5:] += np.float32(1 / 30)  # a dropped frame: frames 4 and 5 are 2/30 s apart
    column = table.schema.get_field_index("timestamp")
    pq.write_table(table.set_column(column, table.schema.field(column), pa.array(timestamps)), path)
    _refused(source, home, "f", "1 of 3 episodes failed: episode 1: ", "file-001.parquet",
             "frame 5 comes 0.066667 s after frame 4", "at 30 fps (meta/info.json) frames are 0.033333 s apart")


def test_truncated_episode_index_is_refused(tmp_path: Path) -> None:
    source = _generate(tmp_path / "src", version="v2.1", episode_lengths=(5, 6, 5, 7, 6, 5, 6, 5))
    home = tmp_path / "home"
    ingest(str(source), name="v2", home=home, workers=1)
    index = source / "meta" / "episodes.jsonl"
    index.write_text("".join(index.read_text().splitlines(keepends=True)[:4]))  # 4 of 8 lines
    _refused(source, home, "v2", "episodes.jsonl", "lists 4 episodes (0..3)", "total_episodes 8")


def test_feature_dtype_that_disagrees_with_the_parquet_is_refused(tmp_path: Path) -> None:
    source, home = _generate(tmp_path / "src"), tmp_path / "home"
    ingest(str(source), name="d", home=home, workers=1)
    features = json.loads((source / "meta" / "info.json").read_text())["features"]
    features["action"]["dtype"] = "float64"
    _edit_info(source, features=features)
    _refused(source, home, "d", "file-000.parquet", "'action' holds float32 values", "declares dtype float64")


def test_task_text_edit_changes_exactly_its_episodes(tmp_path: Path) -> None:
    source = _generate(tmp_path / "src", episode_lengths=(6, 7, 5, 6), tasks=("pick", "place"))
    home = tmp_path / "home"
    ingest(str(source), name="t", home=home, workers=1)
    path = source / "meta" / "tasks.parquet"
    tasks = pq.read_table(path).to_pandas()
    tasks.index = ["pick", "place the cube"]  # the task text is the index, as lerobot writes it
    pq.write_table(pa.Table.from_pandas(tasks), path)
    result = ingest(str(source), name="t", home=home, workers=1)
    assert (result["changed"], result["unchanged"]) == ([1, 3], [0, 2])  # episode e has task e % 2
    ds = open_read_only(result["table"])
    by_episode = dict(zip(np.asarray(ds["episode_index"][:]).tolist(), ds["task"][:]))
    assert by_episode == {0: "pick", 1: "place the cube", 2: "pick", 3: "place the cube"}


def test_pandas_rewrite_reports_only_the_edited_episodes(tmp_path: Path) -> None:
    source = _generate(tmp_path / "src", episode_lengths=(6, 7, 5, 6), episodes_per_file=4)
    home = tmp_path / "home"
    ingest(str(source), name="p", home=home, workers=1)
    path = source / "data/chunk-000/file-000.parquet"
    frame = pq.read_table(path).to_pandas()
    edited = frame["episode_index"].isin([1, 3])
    frame.loc[edited, "action"] = frame.loc[edited, "action"].map(lambda a: a + np.float32(0.5))
    rewritten = pa.Table.from_pandas(frame)
    assert pa.types.is_list(rewritten.schema.field("action").type)  # was fixed_size_list
    pq.write_table(rewritten, path)
    result = ingest(str(source), name="p", home=home, workers=1)
    assert (result["changed"], result["unchanged"]) == ([1, 3], [0, 2])
    ds = open_read_only(result["table"])
    rows = np.flatnonzero(np.asarray(ds["episode_index"][:]) == 3)
    stored = np.asarray(ds["action"][:])[rows][np.argsort(np.asarray(ds["frame_index"][:])[rows])]
    np.testing.assert_array_equal(stored, np.stack(frame.loc[frame["episode_index"] == 3, "action"]))


def test_statistics_of_a_near_constant_float32_column() -> None:
    values = np.linspace(152.50363, 152.54759, 427, dtype=np.float32)
    stats = episode_stats({"observation.state": values}, location="dataset 'x', episode 0")["observation.state"]
    assert stats["min"][0] == values[0] and stats["max"][0] == values[-1]
    for name, q in QUANTILES.items():  # an evenly spaced column: quantiles close to numpy's
        assert abs(float(stats[name][0]) - float(np.quantile(values.astype(np.float64), q))) < 1e-3, name


def test_statistics_errors_name_the_column_and_file() -> None:
    location = "dataset 'x', episode 2, file 'data/f.parquet'"
    with pytest.raises(LeRobotAssetsError, match=f"{location}: statistics of column 'action'"):
        episode_stats({"state": np.ones((3, 2), np.float32), "action": [np.ones(2), np.ones(3)]}, location=location)


def _empty_episode(source: Path, index: int) -> None:
    """Make episode ``index`` (alone in its files) an aborted recording: 0 frames in meta/ and data."""
    data = source / f"data/chunk-000/file-{index:03d}.parquet"
    pq.write_table(pq.read_table(data).slice(0, 0), data)
    meta_path = source / f"meta/episodes/chunk-000/file-{index:03d}.parquet"
    table = pq.read_table(meta_path)
    rows = table.to_pylist()
    frames = rows[0]["length"]
    rows[0]["length"] = 0
    key = "videos/observation.images.front"
    rows[0][f"{key}/to_timestamp"] = rows[0][f"{key}/from_timestamp"]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), meta_path)
    total = json.loads((source / "meta" / "info.json").read_text())["total_frames"]
    _edit_info(source, total_frames=total - frames)


def test_zero_frame_episode_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source, home = _generate(tmp_path / "src"), tmp_path / "home"
    ingest(str(source), name="z", home=home, workers=1)
    _empty_episode(source, 1)
    result = ingest(str(source), name="z", home=home, workers=1)
    assert (result["skipped"], result["removed"], result["episodes"], result["rows"]) == ([1], [1], [0, 2], 17)
    assert "z: skipped episodes [1]: meta/ lists them with 0 frames" in caplog.text
    again = ingest(str(source), name="z", home=home, workers=1)  # every run, not an error
    assert (again["skipped"], again["unchanged"], again["materialized"]) == ([1], [0, 2], [])


@pytest.mark.parametrize(
    "file, fragments",
    [
        ("videos/observation.images.front/chunk-000/file-001.mp4", ("episode 1", "file-001.mp4")),
        ("data/chunk-000/file-002.parquet", ("episode 2", "file-002.parquet")),
        ("meta/tasks.parquet", ("tasks.parquet",)),
        ("meta/info.json", ("info.json",)),
    ],
)
def test_git_lfs_pointers_are_named(file: str, fragments: tuple[str, ...], tmp_path: Path) -> None:
    source, home = _generate(tmp_path / "src"), tmp_path / "home"
    ingest(str(source), name="l", home=home, workers=1)
    (source / file).write_text(LFS_POINTER)
    _refused(source, home, "l", *fragments, "Git LFS pointer", "git lfs pull")


def test_git_lfs_pointer_tasks_jsonl_is_named(tmp_path: Path) -> None:
    source, home = _generate(tmp_path / "src", version="v2.1"), tmp_path / "home"
    ingest(str(source), name="l2", home=home, workers=1)
    (source / "meta" / "tasks.jsonl").write_text(LFS_POINTER)
    _refused(source, home, "l2", "tasks.jsonl", "Git LFS pointer", "git lfs pull")


def test_error_lines_are_bounded_and_details_go_to_a_file(tmp_path: Path) -> None:
    source = _generate(tmp_path / "src", episode_lengths=(5, 6, 5, 6, 5, 6))
    home = tmp_path / "home"
    ingest(str(source), name="b", home=home, workers=1)
    with pytest.raises(LeRobotAssetsError, match=r"no episodes \[6-1000000\] .*\(it has 6 episodes: \[0-5\]\)"):
        ingest(str(source), name="b", home=home, episodes=range(1_000_001), workers=1)
    for index in range(6):
        (source / f"videos/observation.images.front/chunk-000/file-{index:03d}.mp4").write_text(LFS_POINTER)
    message = _refused(source, home, "b", "6 of 6 episodes failed: episode 0: ", "episode 2: ", "... and 3 more")
    assert "episode 3:" not in message
    details = Path(message.rsplit("(all 6 in '", 1)[1].rstrip("')"))
    listed = json.loads(details.read_text())
    assert sorted(listed) == [str(i) for i in range(6)]
    assert all("Git LFS pointer" in listed[str(i)] and f"file-{i:03d}.mp4" in listed[str(i)] for i in range(6))


def test_quiet_cli_prints_no_dagster_lines(tmp_path: Path) -> None:
    source, home = _generate(tmp_path / "src", episode_lengths=(5, 6)), tmp_path / "home"
    command = [sys.executable, "-m", "lerobot_assets.cli", "ingest", str(source), "--name", "q", "--home", str(home),
               "--workers", "1", "-q"]
    env = {**os.environ, "LEROBOT_ASSETS_HOME": str(home)}
    ok = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0 and json.loads(ok.stdout.splitlines()[-1])["rows"] == 11
    assert ok.stderr == "", ok.stderr
    (source / "videos/observation.images.front/chunk-000/file-001.mp4").write_text(LFS_POINTER)
    command[command.index(str(home))] = str(tmp_path / "home2")  # a first ingest: episode 1 runs and fails
    failed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert failed.returncode == 1
    assert " INFO " not in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
    assert failed.stderr.splitlines() == [failed.stderr.strip()], failed.stderr  # one line, not a log line before it
    assert failed.stderr.startswith("error: 1 of 2 episodes failed: episode 1: ")


@pytest.mark.parametrize(
    "change, fragments",
    [
        ({"cameras": ("front", "side")}, ("new columns ['observation.images.side']",)),
        ({"state_dim": 7}, ("'observation.state' is embedding(6", "embedding(7")),
    ],
)
def test_a_change_the_table_cannot_hold_is_refused(change: dict, fragments: tuple[str, ...], tmp_path: Path) -> None:
    source, home = _generate(tmp_path / "src"), tmp_path / "home"
    ingest(str(source), name="c", home=home, workers=1)
    shutil.rmtree(source)
    _generate(source, **change)
    _refused(source, home, "c", "cannot hold the dataset", *fragments, "under a new --name")
