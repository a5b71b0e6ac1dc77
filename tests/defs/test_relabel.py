"""Relabelling: labels validated by a blocking check, written onto a branch per episode, diffed, merged.

One module-scoped home holds the official sample ingested once; the tests run in file order, and the
merge tests come last because they change main.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import deeplake
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckKey, DagsterInstance

from lerobot_assets.core.errors import TableError
from lerobot_assets.core.table.access import open_read_only, open_writable
from lerobot_assets.core.table.branches import merge_branch
from lerobot_assets.core.table.episodes import replace_episode
from lerobot_assets.core.table.label_files import ColumnSpec, Label, LabelError, read_labels
from lerobot_assets.core.table.labels import apply_labels
from lerobot_assets.defs.partitions import dataset_asset_key, episode_key
from lerobot_assets.runtime.commands import ingest, open_snapshot, snapshot
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.registry import registry_of
from lerobot_assets.runtime.relabel import diff, merge, relabel

NEW_TASK = "Wipe the table twice"
OLD_TASK = "Wipe the table"  # episode 1's task in the official sample
LABELS = [
    {"episode": 1, "frame_start": None, "frame_end": None, "column": "task", "value": NEW_TASK},
    {"episode": 2, "frame_start": 0, "frame_end": 10, "column": "next.reward", "value": 1.5},
]


def _write_csv(path: Path, labels: list[dict], header: tuple[str, ...] = ()) -> Path:
    """A CSV label file; ``header`` holds new-column declarations (``next.reward:float32=0``)."""
    with path.open("w", newline="") as stream:
        stream.writelines(f"# new-column: {spec}\n" for spec in header)
        writer = csv.DictWriter(stream, fieldnames=["episode", "frame_start", "frame_end", "column", "value"])
        writer.writeheader()
        writer.writerows([{k: "" if v is None else v for k, v in label.items()} for label in labels])
    return path


def _columns(ds, *names: str) -> dict[str, np.ndarray]:
    return {name: np.asarray(ds[name][:]) for name in names}


def _check_outcomes(home: Path) -> list[bool]:
    """Outcomes of the ``labels_fit_table`` check, oldest first."""
    instance = DagsterInstance.from_config(str(home / "dagster"))
    key = AssetCheckKey(dataset_asset_key("small", "label_file"), "labels_fit_table")
    records = instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
    return [r.event.dagster_event.event_specific_data.passed for r in reversed(records)]


def _materializations(home: Path) -> dict[str, dict]:
    """Latest ``episode_labels`` metadata per partition, from the home's Dagster instance."""
    instance = DagsterInstance.from_config(str(home / "dagster"))
    records = instance.fetch_materializations(dataset_asset_key("small", "episode_labels"), limit=100).records
    latest: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: r.storage_id):
        event = record.asset_materialization
        latest[event.partition] = {key: value.value for key, value in event.metadata.items()}
    return latest


@pytest.fixture(scope="module")
def state(official_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The sample ingested, then relabelled onto branch ``fix`` from a CSV file (episodes 1 and 2)."""
    home = tmp_path_factory.mktemp("relabel-home")
    ingest(str(official_dataset), name="small", home=home, workers=1)
    table = registry_of(Home(home)).dataset_source("small").table
    main_version = open_read_only(table).version
    labels_path = _write_csv(home / "labels.csv", LABELS, header=("next.reward:float32=0",))
    result = relabel("small", labels_path, "fix", home)
    return {"home": home, "table": table, "main_version": main_version, "labels": labels_path, "result": result}


def test_label_files_read_alike_in_every_format(tmp_path: Path) -> None:
    csv_labels = read_labels(_write_csv(tmp_path / "l.csv", LABELS))
    (tmp_path / "l.json").write_text(json.dumps([{k: v for k, v in x.items() if v is not None} for x in LABELS]))
    json_labels = read_labels(tmp_path / "l.json")
    pq.write_table(pa.Table.from_pylist([{**x, "value": str(x["value"])} for x in LABELS]), tmp_path / "l.parquet")
    parquet_labels = read_labels(tmp_path / "l.parquet")
    expected = [Label(1, "task", NEW_TASK), Label(2, "next.reward", 1.5, 0, 10)]
    assert json_labels == expected
    assert csv_labels == parquet_labels == [Label(1, "task", NEW_TASK), Label(2, "next.reward", "1.5", 0, 10)]
    bad = _write_csv(tmp_path / "bad.csv", [{**LABELS[0], "episode": "one"}, {**LABELS[1], "column": ""}])
    with pytest.raises(LabelError) as error:
        read_labels(bad)
    assert error.value.problems == [
        "row 1: episode must be a non-negative integer, got 'one'",
        "row 2: missing column",
    ]


def test_relabel_changes_only_the_labelled_rows_on_the_branch(state: dict) -> None:
    result = state["result"]
    assert (result["dataset"], result["branch"], result["rows"], result["episodes"]) == ("small", "fix", 43, [1, 2])
    assert (result["columns"], result["new_columns"]) == (["next.reward", "task"], ["next.reward"])
    assert result["materialized"] == [1, 2]
    main = open_read_only(state["table"])
    assert main.version == state["main_version"]
    assert "next.reward" not in {c.name for c in main.schema.columns}
    branch = main.branches["fix"].open()
    assert branch.version == result["version"]
    names = ("episode_index", "frame_index", "task", "index", "task_index", "observation.state", "action")
    before, after = _columns(main, *names), _columns(branch, *names)
    for name in ("episode_index", "frame_index", "index", "observation.state", "action"):
        assert np.array_equal(before[name], after[name]), name
    episode, frame = before["episode_index"], before["frame_index"]
    # task_index follows task: the new text gets the next index of the table's task list
    assert np.array_equal(after["task_index"][episode != 1], before["task_index"][episode != 1])
    assert set(after["task_index"][episode == 1]) == {before["task_index"].max() + 1}
    assert set(before["task"][episode == 1]) == {OLD_TASK}
    assert set(after["task"][episode == 1]) == {NEW_TASK}
    assert np.array_equal(after["task"][episode != 1], before["task"][episode != 1])
    reward = np.asarray(branch["next.reward"][:])
    labelled = (episode == 2) & (frame < 10)
    assert reward.dtype == np.float32 and labelled.sum() == 10
    assert np.all(reward[labelled] == 1.5) and np.all(reward[~labelled] == 0.0)


def test_dagster_records_only_the_affected_episode_partitions(state: dict) -> None:
    records = _materializations(state["home"])
    assert set(records) == {episode_key(1), episode_key(2)}
    for index, rows, columns in ((1, 33, ["task"]), (2, 10, ["next.reward"])):
        metadata = records[episode_key(index)]
        assert (metadata["branch"], metadata["label_file"]) == ("fix", str(state["labels"]))
        assert (metadata["rows_changed"], metadata["columns"]) == (rows, columns)
        assert metadata["table_version"]
    assert records[episode_key(2)]["table_version"] == state["result"]["version"]
    assert _check_outcomes(state["home"]) == [True]


def test_applying_the_same_labels_again_changes_nothing(state: dict) -> None:
    again = apply_labels(state["table"], read_labels(state["labels"]), "fix", "relabel again")
    assert (again.rows, again.episodes, again.columns, again.new_columns) == (0, [], [], [])
    assert again.version == state["result"]["version"] and not again.created_branch


def test_diff_reports_the_changed_rows(state: dict) -> None:
    report = diff("small", "fix", state["home"])
    assert (report["dataset"], report["branch"], report["rows"], report["episodes"]) == ("small", "fix", 43, [1, 2])
    assert report["columns"] == {"task": 33, "next.reward": 10}
    assert report["new_columns"] == ["next.reward"]
    assert report["main_version"] == state["main_version"] and not report["main_moved"]
    assert {"episode": 1, "frame": 0, "column": "task", "main": OLD_TASK, "branch": NEW_TASK} in report["examples"]
    assert {"episode": 2, "frame": 0, "column": "next.reward", "main": None, "branch": 1.5} in report["examples"]
    with pytest.raises(TableError, match="no branch 'nope'"):
        diff("small", "nope", state["home"])


def test_invalid_labels_are_rejected_by_the_blocking_check_before_any_write(state: dict, tmp_path: Path) -> None:
    home, table = state["home"], state["table"]
    before = open_read_only(table)
    main_version, fix_version = before.version, before.branches["fix"].open().version
    materialized = _materializations(home)
    invalid = [
        {"episode": 9, "column": "task", "value": "x"},
        {"episode": 0, "frame_start": 30, "frame_end": 40, "column": "task", "value": "x"},
        {"episode": 0, "column": "task", "value": 3},
        {"episode": 0, "column": "next.reward", "value": "high"},
        {"episode": 0, "column": "frame_index", "value": 1},
        {"episode": 0, "column": "observation.images.cam_high", "value": "x"},
    ]
    (tmp_path / "invalid.json").write_text(json.dumps(invalid))
    with pytest.raises(LabelError) as error:
        relabel("small", tmp_path / "invalid.json", "fix", home)
    message = str(error.value)
    assert message.startswith("labels for dataset 'small' were rejected, nothing was written:")
    for expected in (
        "label 1: dataset 'small', episode 9 does not exist (the table has episodes 0, 1, 2)",
        "label 2: frames 30..40 (end exclusive) are not inside dataset 'small', episode 0, which has frames 0..36",
        "label 3: value 3 for column 'task' of dataset 'small', episode 0: expected text",
        "label 4: value 'high' for column 'next.reward' of dataset 'small', episode 0: expected a number (float32)",
        "column 'frame_index' is protected",
        "column 'observation.images.cam_high' is protected",
    ):
        assert expected in message, expected
    (tmp_path / "unknown.json").write_text(json.dumps(invalid[:1]))
    with pytest.raises(LabelError, match="episode 9 does not exist"):
        relabel("small", tmp_path / "unknown.json", "other", home)
    after = open_read_only(table)
    assert after.version == main_version
    assert after.branches.names() == before.branches.names()  # "other" was never created
    assert after.branches["fix"].open().version == fix_version
    assert _materializations(home) == materialized
    assert _check_outcomes(home)[-2:] == [False, False]
    with pytest.raises(LabelError, match="never written onto main"):
        relabel("small", state["labels"], "main", home)


def test_merge_brings_labels_to_main_and_earlier_tags_keep_the_old_ones(state: dict) -> None:
    home, table = state["home"], state["table"]
    tag = snapshot("small", tag="before-merge", home=home)
    merged = merge("small", "fix", home)
    assert (merged["merged"], merged["rows"], merged["episodes"]) == (True, 43, [1, 2])
    assert merged["version"] != tag["version"]
    main = open_read_only(table)
    assert main.version == merged["version"]
    columns = _columns(main, "episode_index", "frame_index", "task", "next.reward")
    assert set(columns["task"][columns["episode_index"] == 1]) == {NEW_TASK}
    labelled = (columns["episode_index"] == 2) & (columns["frame_index"] < 10)
    assert np.all(columns["next.reward"][labelled] == 1.5) and np.all(columns["next.reward"][~labelled] == 0.0)
    pinned = open_snapshot("small", "before-merge", home=home)
    assert pinned.version == tag["version"]
    assert "next.reward" not in {c.name for c in pinned.schema.columns}
    old = _columns(pinned, "episode_index", "task")
    assert set(old["task"][old["episode_index"] == 1]) == {OLD_TASK}
    assert diff("small", "fix", home)["rows"] == 0
    again = merge("small", "fix", home)
    assert (again["merged"], again["version"]) == (False, merged["version"])


def test_merge_refuses_when_main_replaced_rows_since_the_branch(state: dict) -> None:
    """Deeplake merges by row identity: labels on rows a re-ingest replaced would silently vanish."""
    home, table = state["home"], state["table"]
    _label_then_reingest(state, labelled=0, branch="stale", reingested=0)
    version = open_read_only(table).version
    assert diff("small", "stale", home)["replaced_on_main"] == [0]  # diff says merge will refuse
    with pytest.raises(TableError, match="replaced or removed rows since the branch was made"):
        merge_branch(table, "stale")
    assert open_read_only(table).version == version


def test_a_reingest_of_another_episode_does_not_block_a_merge(state: dict) -> None:
    """Only re-ingests of the episodes a branch labels make its labels stale; others merge as usual."""
    home, table = state["home"], state["table"]
    _label_then_reingest(state, labelled=2, branch="other", reingested=0)
    assert diff("small", "other", home)["replaced_on_main"] == []
    merged = merge_branch(table, "other")
    assert merged["episodes"] == [2]
    rows = _columns(open_read_only(table), "episode_index", "next.success")
    assert rows["next.success"][rows["episode_index"] == 2].all() and not rows["next.success"][rows["episode_index"] != 2].any()


def _label_then_reingest(state: dict, *, labelled: int, branch: str, reingested: int) -> None:
    """Label episode ``labelled`` on a new ``branch``, then re-ingest episode ``reingested`` on main."""
    declared = {"next.success": ColumnSpec("next.success", "bool", False)}
    apply_labels(state["table"], [Label(labelled, "next.success", True)], branch, f"label episode {labelled}",
                 new_columns=declared)
    _reingest_episode(state["table"], reingested)


def _reingest_episode(url: str, index: int) -> None:
    """Replace episode ``index``'s rows with copies of themselves, as a re-ingest does."""
    ds = open_writable(url)
    replace_episode(ds, index, episode_copy(ds, index))
    ds.commit(f"re-ingest episode {index}")


def episode_copy(ds: deeplake.Dataset, index: int) -> dict:
    """Episode ``index``'s rows as ``Dataset.append`` takes them (images as their stored bytes)."""
    offsets = np.flatnonzero(np.asarray(ds["episode_index"][:]) == index)
    first, last = int(offsets[0]), int(offsets[-1]) + 1
    return {
        column.name: (
            [ds[column.name].get_bytes(int(o)) for o in offsets]
            if column.dtype.is_image
            else ds[column.name][first:last]
        )
        for column in ds.schema.columns
    }
