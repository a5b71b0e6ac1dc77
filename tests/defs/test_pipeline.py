"""End to end: the official v3.0 sample through a real Dagster instance into a real Deeplake table."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance
from PIL import Image

from lerobot_assets.cli import main as cli_main
from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.core.table.query import run_query
from lerobot_assets.defs.partitions import dataset_asset_key, episode_key
from lerobot_assets.runtime.commands import ingest, open_snapshot, snapshot
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.instance import dagster_instance
from lerobot_assets.runtime.runner import Settings, run_job

from tests.conftest import white_block_x

CAMERAS = ("observation.images.cam_high", "observation.images.cam_left_wrist")
TELEMETRY, FRAMES, TABLE = (dataset_asset_key("small", name) for name in ("telemetry_frame", "decoded_camera_frames", "deeplake_table"))


def _decode_all(path: Path) -> dict[float, np.ndarray]:
    """Every frame of a video by presentation time, decoded front to back without seeking."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {round(float(f.pts * stream.time_base), 4): f.to_ndarray(format="rgb24") for f in container.decode(stream)}


def _table_frame(ds) -> pd.DataFrame:
    columns = ["index", "episode_index", "frame_index", "timestamp", "task_index", "task"]
    frame = pd.DataFrame({c: list(ds[c][:]) for c in columns})
    for c in ("observation.state", "action", "observation.effort"):
        frame[c] = list(np.asarray(ds[c][:]))
    return frame


@pytest.fixture(scope="module")
def ingested(official_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("home")
    result = ingest(str(official_dataset), name="small", home=home, workers=1)
    return {"home": home, "result": result}


def test_official_fixture_rows_values_and_tasks(ingested: dict, official_dataset: Path) -> None:
    result = ingested["result"]
    assert result["rows"] == 101
    assert result["episodes"] == [0, 1, 2]
    assert result["added"] == [0, 1, 2]
    ds = open_read_only(result["table"])
    table = _table_frame(ds).sort_values("index").reset_index(drop=True)
    assert table.groupby("episode_index").size().to_dict() == {0: 37, 1: 33, 2: 31}
    source = pd.read_parquet(official_dataset / "data" / "chunk-000" / "file-000.parquet")
    assert table["index"].tolist() == source["index"].tolist()
    for column in ("observation.state", "action", "observation.effort"):
        expected = np.stack(source[column].to_numpy()).astype(np.float32)
        assert np.array_equal(np.stack(table[column].to_numpy()), expected), column
    assert np.array_equal(table["timestamp"].to_numpy(np.float32), source["timestamp"].to_numpy(np.float32))
    tasks = pd.read_parquet(official_dataset / "meta" / "tasks.parquet")
    task_text = {int(i): t for t, i in zip(tasks.index, tasks["task_index"])}
    assert table["task"].tolist() == [task_text[i] for i in source["task_index"]]
    assert set(table.loc[table.episode_index == 1, "task"]) == {"Wipe the table"}


def test_official_fixture_images_match_independent_decode(ingested: dict, official_dataset: Path) -> None:
    ds = open_read_only(ingested["result"]["table"])
    episodes = pd.read_parquet(official_dataset / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    starts = dict(zip(episodes["episode_index"], episodes["videos/observation.images.cam_high/from_timestamp"]))
    meta_rows = _table_frame(ds)
    for camera in CAMERAS:
        reference = _decode_all(official_dataset / "videos" / camera / "chunk-000" / "file-000.mp4")
        stored = ds[camera]
        for offset in range(len(ds)):
            row = meta_rows.iloc[offset]
            image = np.asarray(Image.open(io.BytesIO(stored.get_bytes(offset))).convert("RGB"))
            expected = reference[round(starts[row.episode_index] + float(row.timestamp), 4)]
            assert image.shape == (96, 128, 3)
            assert np.abs(image.astype(int) - expected.astype(int)).mean() < 3.0, (camera, offset)
            assert abs(white_block_x(image) - (int(row.frame_index) * 7) % (128 - 40)) <= 1, (camera, offset)


def test_dagster_instance_records_partitions_and_metadata(ingested: dict) -> None:
    instance = DagsterInstance.from_config(str(ingested["home"] / "dagster"))
    assert instance.get_dynamic_partitions("small_episodes") == ["000000", "000001", "000002"]
    event = instance.get_latest_materialization_event(dataset_asset_key("small", "hf_snapshot"))
    assert event.asset_materialization.partition is None
    assert event.asset_materialization.metadata["files"].value == 7
    pinned = event.asset_materialization.metadata["pinned_copy"].value
    assert (Path(pinned) / "meta" / "info.json").is_file() and "storage" not in Path(pinned).parts
    for index, rows in ((0, 37), (1, 33), (2, 31)):
        record = instance.get_latest_data_version_record(TABLE, partition_key=episode_key(index))
        metadata = record.asset_materialization.metadata
        assert metadata["rows_written"].value == rows
        assert metadata["dagster/row_count"].value == rows
        schema = {column.name: column.type for column in metadata["dagster/column_schema"].schema.columns}
        assert schema["episode_index"] == "int64" and schema["task"].startswith("text")
        assert {"observation.images.cam_high", "observation.state", "action", "timestamp"} <= set(schema)
        assert metadata["table_version"].value
        assert "data:image/jpeg;base64," in metadata["preview"].value
        assert record.asset_materialization.tags["dagster/data_version"]
        assert metadata["data_version"].value.endswith("-3") and metadata["unchanged"].value is False
    meta_event = instance.get_latest_materialization_event(dataset_asset_key("small", "episode_metadata"))
    assert meta_event.asset_materialization.metadata["episodes"].value == 3


def test_cli_instance_is_dagsters_default_storage_with_compute_logs(ingested: dict) -> None:
    """The embedded instance uses Dagster's own default storage and compute log manager (no custom
    classes, no private module paths in its dagster.yaml), and keeps the steps' stdout/stderr."""
    dagster_home = ingested["home"] / "dagster"
    config = (dagster_home / "dagster.yaml").read_text()
    assert "module:" not in config and "lerobot_assets" not in config
    ours = dagster_instance(Home(ingested["home"]))
    assert ours is dagster_instance(Home(ingested["home"]))
    assert type(ours.event_log_storage).__name__ == "SqliteEventLogStorage"
    assert type(ours.run_storage).__name__ == "SqliteRunStorage"
    assert type(ours.compute_log_manager).__name__ == "LocalComputeLogManager"
    instance = DagsterInstance.from_config(str(dagster_home))
    assert instance.get_dynamic_partitions("small_episodes") == ["000000", "000001", "000002"]
    record = instance.get_latest_data_version_record(TABLE, partition_key=episode_key(1))
    assert record.asset_materialization.metadata["rows_written"].value == 33
    runs = instance.get_runs()
    assert len(runs) == 2  # the dataset run and one run over the range of episodes, under the named job of each use
    assert sorted(run.job_name for run in runs) == ["small__ingest_dataset", "small__ingest_episodes"]
    episodes = next(run for run in runs if run.job_name == "small__ingest_episodes")
    assert (episodes.tags["dagster/asset_partition_range_start"], episodes.tags["dagster/asset_partition_range_end"]) == ("000000", "000002")
    assert all(run.tags["launched-by"] == "lerobot-assets-cli" for run in runs)
    logs = list((dagster_home / "storage").rglob("*.err"))
    assert logs and any("decoding" in path.read_text() for path in logs)


def test_an_old_home_with_the_removed_custom_storages_opens_with_dagsters_default(ingested: dict, tmp_path: Path) -> None:
    """A home whose dagster.yaml names the custom storage classes of earlier versions (same files
    as Dagster's default storage) is rewritten to the default storage and keeps its records."""
    import shutil

    home = tmp_path / "old"
    shutil.copytree(ingested["home"] / "dagster", home / "dagster")
    (home / "dagster" / "dagster.yaml").write_text(
        "event_log_storage:\n  module: lerobot_assets.event_log\n  class: PooledSqliteEventLogStorage\n"
        "  config:\n    base_dir: /nowhere\n"
    )
    instance = dagster_instance(Home(home))
    assert type(instance.event_log_storage).__name__ == "SqliteEventLogStorage"
    assert instance.get_dynamic_partitions("small_episodes") == ["000000", "000001", "000002"]


def test_dagster_home_is_honoured(official_dataset: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With DAGSTER_HOME set, runs and partitions are recorded in that instance, not in the home's embedded one."""
    from lerobot_assets.runtime import instance

    configured = tmp_path / "deployment"
    configured.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(configured))
    monkeypatch.setattr(instance, "_instances", {})  # as in a fresh process
    ingest(str(official_dataset), name="small", home=home, episodes=[0], workers=1)
    instance = DagsterInstance.from_config(str(configured))
    assert len(instance.get_runs()) == 2  # the dataset run and the episode's
    assert instance.get_dynamic_partitions("small_episodes") == ["000000", "000001", "000002"]
    assert not (home / "dagster" / "dagster.yaml").exists()


def test_every_asset_has_a_group_of_its_use_and_a_kind() -> None:
    """The UI groups assets by use (ingest, training, labels) and shows what each is stored as."""
    from lerobot_assets.definitions import RESOURCES, build_definitions

    specs = {spec.key.path[-1]: spec for spec in build_definitions(RESOURCES, ["small"]).resolve_all_asset_specs()}
    groups = {key: spec.group_name for key, spec in specs.items()}
    assert groups == {
        "hf_snapshot": "ingest", "episode_metadata": "ingest", "telemetry_frame": "ingest",
        "decoded_camera_frames": "ingest", "deeplake_table": "ingest",
        "training_snapshot": "training", "label_file": "labels", "episode_labels": "labels",
    }
    assert all(spec.kinds for spec in specs.values()), {k: s.kinds for k, s in specs.items()}
    assert "deeplake" in specs["deeplake_table"].kinds


def test_default_tags_stay_unique_within_one_second() -> None:
    """Two snapshots in the same second (a no-op re-ingest takes a fraction of one) get distinct tags."""
    from lerobot_assets.defs.snapshot import default_tag

    first = default_tag("demo", "fcc8313f0123", [])
    assert first.startswith("demo-") and first.endswith("Z-fcc8313f")
    second = default_tag("demo", "fcc8313f0123", [first])
    third = default_tag("demo", "fcc8313f0123", [first, second])
    if second.startswith(first):  # same second (else the clock moved on and no suffix was needed)
        assert (second, third) == (f"{first}-2", f"{first}-3")
    assert len({first, second, third}) == 3


def test_reingest_is_idempotent_and_snapshot_is_stable(official_dataset: Path, home: Path) -> None:
    first = ingest(str(official_dataset), name="small", home=home, workers=1)
    tag = snapshot("small", tag="run-001", home=home)
    assert (tag["rows"], tag["tag"]) == (101, "run-001")
    again = ingest(str(official_dataset), name="small", home=home, workers=1)
    assert again["rows"] == 101 and again["materialized"] == [] and again["unchanged"] == [0, 1, 2]
    assert again["version"] == tag["version"]
    # An explicit re-run of one episode replaces its rows instead of appending them.
    assert run_job(dagster_instance(Home(home)), Settings(home), "small", "ingest_episodes", partitions=[episode_key(1)]).success
    ds = open_read_only(first["table"])
    assert len(ds) == 101
    assert int((np.asarray(ds["episode_index"][:]) == 1).sum()) == 33
    pinned = open_snapshot("small", "run-001", home=home)
    assert len(pinned) == 101 and pinned.version == tag["version"]


def test_subset_then_rest_equals_full(official_dataset: Path, tmp_path: Path) -> None:
    full = ingest(str(official_dataset), name="full", home=tmp_path / "a", workers=1)
    part = ingest(str(official_dataset), name="parts", home=tmp_path / "b", episodes=[1], workers=1)
    assert part["episodes"] == [1] and part["rows"] == 33
    rest = ingest(str(official_dataset), name="parts", home=tmp_path / "b", episodes=[0, 2], workers=1)
    assert rest["added"] == [0, 2] and rest["rows"] == 101
    a = _table_frame(open_read_only(full["table"])).sort_values("index").reset_index(drop=True)
    b = _table_frame(open_read_only(rest["table"])).sort_values("index").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_cli_commands_print_json(official_dataset: Path, home: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["ingest", str(official_dataset), "--name", "small", "--episodes", "0-1", "--workers", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["dataset"], result["rows"], result["episodes"]) == ("small", 70, [0, 1])
    assert cli_main(["snapshot", "small", "--tag", "run-001"]) == 0
    tag = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (tag["tag"], tag["rows"], tag["table"]) == ("run-001", 70, result["table"])
    assert cli_main(["info", "small"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["tags"] == {"run-001": tag["version"]} and info["rows"] == 70 and info["revision"]
    assert cli_main(["ingest", str(official_dataset), "--name", "small", "--episodes", "7"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "no episodes [7]" in err
    assert cli_main(["snapshot", "missing-name"]) == 1
    assert "not registered" in capsys.readouterr().err


def test_query_command(ingested: dict, capsys: pytest.CaptureFixture) -> None:
    home = str(ingested["home"])
    tql = "SELECT task[0] AS task, SHAPE(episode_index)[0] AS frames GROUP BY task"
    assert cli_main(["query", "small", tql, "--json", "--home", home]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {r["task"]: r["frames"] for r in result["results"]} == {
        "Pick up the shrimp": 37, "Wipe the table": 33, "Open the drawer": 31}
    window = 'SELECT episode_index, frame_index WHERE episode_index == 1 AND "timestamp" < 0.1'
    assert cli_main(["query", "small", window, "--home", home]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "episode_index\tframe_index" and lines[1:4] == ["1\t0", "1\t1", "1\t2"]
    assert json.loads(lines[-1])["rows"] == 3


def test_indexes_created_at_ingest_and_used_by_snapshot_queries(ingested: dict) -> None:
    home, table = ingested["home"], ingested["result"]["table"]
    ds = open_read_only(table)
    indexes = {column: [str(i) for i in ds[column].indexes] for column in ("episode_index", "task", "observation.state")}
    assert indexes["episode_index"] == ["inverted_index"] and "inverted_index" in indexes["task"]
    assert indexes["observation.state"] == ["clustered"]
    snapshot("small", tag="indexed", home=home)
    pinned = open_snapshot("small", "indexed", home=home)
    states = np.asarray(pinned["observation.state"][:])
    target = states[40]
    vector = ", ".join(f"{v:.6f}" for v in target)
    rows = run_query(pinned, f'SELECT * ORDER BY COSINE_SIMILARITY("observation.state", ARRAY[{vector}]) DESC LIMIT 3')
    best = np.asarray(rows[0]["observation.state"], dtype=np.float32)
    assert len(rows) == 3 and "episode_stats" not in rows[0]  # the stats JSON is internal
    assert float(best @ target / (np.linalg.norm(best) * np.linalg.norm(target))) > 0.9999
    episode = run_query(pinned, "SELECT frame_index WHERE episode_index == 2")
    assert [r["frame_index"] for r in episode] == list(range(31))
    assert len(run_query(pinned, "SELECT * WHERE CONTAINS(task, 'drawer')")) == 31


def test_episode_assets_materialize_apart_like_together(ingested: dict, official_dataset: Path, home: Path) -> None:
    """Each per-episode asset can be materialized alone; the rows equal those of a run of all three."""

    table = ingest(str(official_dataset), name="small", home=home, episodes=[0], workers=1)["table"]
    instance, settings = dagster_instance(Home(home)), Settings(home)
    staged = home / "tables" / ".staging" / "small" / "episode_000001.arrow"

    def run(keys: list[AssetKey], index: int):
        result = run_job(instance, settings, "small", "ingest_episodes", partitions=[episode_key(index)], assets=keys)
        assert result.success
        materialized = {e.asset_key for e in result.get_asset_materialization_events()}
        checks = {e.check_name for e in result.get_asset_check_evaluations()}
        messages = [e.message for e in instance.all_logs(result.run_id) if e.user_message]
        return materialized, checks, messages

    # telemetry alone: recorded, nothing written
    assert run([TELEMETRY], 1)[:2] == ({TELEMETRY}, {"finite_values"})
    assert len(open_read_only(table)) == 37 and not staged.exists()
    # frames alone: staged for a later table run, still nothing written
    assert run([FRAMES], 1)[:2] == ({FRAMES}, {"frames_aligned"})
    assert staged.is_file() and len(open_read_only(table)) == 37
    # the table alone takes the staged frames, and removes the staging file once they are written
    materialized, checks, messages = run([TABLE], 1)
    assert (materialized, checks) == ({TABLE}, {"episode_rows_match"})
    assert any("using the frames staged" in m for m in messages) and not staged.exists()
    # the table alone with nothing staged decodes the frames itself
    assert any("no staged frames for these inputs; decoding" in m for m in run([TABLE], 2)[2])
    mine, theirs = open_read_only(table), open_read_only(ingested["result"]["table"])
    key = ["episode_index", "frame_index"]
    ours, full = (_table_frame(ds).sort_values(key).reset_index(drop=True) for ds in (mine, theirs))
    pd.testing.assert_frame_equal(ours, full)
    for camera in CAMERAS:
        frames = [dict(zip(np.asarray(ds["index"][:]).tolist(), ds[camera].get_bytes(list(range(len(ds)))))) for ds in (mine, theirs)]
        assert frames[0] == frames[1]


def _purge_delay_deeplake_sees(module: str, user_value: str | None = None) -> str:
    """mimalloc's purge delay as Deeplake's allocator reports it when loaded by importing ``module``."""
    import re
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MIMALLOC_PURGE_DELAY"} | {"MIMALLOC_VERBOSE": "1"}
    if user_value is not None:
        env["MIMALLOC_PURGE_DELAY"] = user_value
    run = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True, check=True)
    # Deeplake's mimalloc prints its options with a "mimalloc: " prefix; pyarrow's own (v3, default 1000 ms)
    # prints them without one, first or second depending on which library a module imports first.
    return re.search(r"mimalloc: option 'purge_delay': (-?\d+)", run.stderr).group(1)


def test_writing_processes_keep_deeplakes_freed_memory_for_reuse() -> None:
    """The asset graph sets mimalloc's purge delay before Deeplake loads (10 s, not 10 ms, so consecutive
    episode writes reuse memory instead of faulting it in again), for the CLI and for `dagster dev`'s
    runs; a value the user set is kept, and a process that only reads tables keeps mimalloc's default."""
    assert _purge_delay_deeplake_sees("lerobot_assets.runtime.commands") == "10000"
    assert _purge_delay_deeplake_sees("lerobot_assets.definitions") == "10000"
    assert _purge_delay_deeplake_sees("lerobot_assets.runtime.commands", "250") == "250"
    assert _purge_delay_deeplake_sees("lerobot_assets.training") == "10"


def test_episode_runs_record_inputs_of_their_own_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster records the in-step inputs of decoded_camera_frames and deeplake_table as the latest
    materialization of the upstream asset in any partition; each run records its results back to
    back, so that is a materialization of the same run (of the episode itself in a one-episode run),
    never one of another run, and no data version mismatch is reported."""
    from lerobot_assets.runtime import commands as launch
    from lerobot_assets.testing.synthetic import generate_dataset

    monkeypatch.setattr(launch, "EPISODES_PER_RUN", 3)
    root = generate_dataset(tmp_path / "ds", episode_lengths=[20] * 8, episodes_per_file=4)
    home = tmp_path / "home"
    ingest(str(root), name="par", home=home, workers=2)
    assert run_job(dagster_instance(Home(home)), Settings(home), "par", "ingest_episodes", partitions=[episode_key(7)]).success
    instance = DagsterInstance.from_config(str(home / "dagster"))
    keys = {name: dataset_asset_key("par", name) for name in ("telemetry_frame", "decoded_camera_frames", "deeplake_table")}
    records = {name: instance.fetch_materializations(key, limit=100).records for name, key in keys.items()}
    by_id = {r.storage_id: r for rs in records.values() for r in rs}
    runs = [r for r in instance.get_runs() if r.job_name == "par__ingest_episodes"]
    assert len(runs) == 4  # 8 episodes in ranges of 3, then episode 7 alone
    for table in records["deeplake_table"]:
        for name in ("telemetry_frame", "decoded_camera_frames"):
            pointer = by_id[int(table.asset_materialization.tags[f"dagster/input_event_pointer/par/{name}"])]
            assert pointer.run_id == table.run_id, table.asset_materialization.partition
    alone = next(r for r in records["deeplake_table"] if r.run_id == runs[0].run_id)  # the latest run: episode 7
    pointer = alone.asset_materialization.tags["dagster/input_event_pointer/par/telemetry_frame"]
    assert by_id[int(pointer)].asset_materialization.partition == episode_key(7)
    warnings = [e.message for run in runs for e in instance.all_logs(run.run_id) if "Data version mismatch" in (e.message or "")]
    assert warnings == []


def test_episode_assets_list_exactly_the_episodes_of_their_dataset(tmp_path: Path) -> None:
    """With two datasets of 6 and 3 episodes, every episode asset of each lists exactly its own
    episodes as partitions (no (dataset, episode) pair that does not exist), and so does the instance."""
    from lerobot_assets.runtime.runner import code_location
    from lerobot_assets.testing.synthetic import generate_dataset

    home = tmp_path / "home"
    for name, count in (("six", 6), ("three", 3)):
        root = generate_dataset(tmp_path / name, episode_lengths=[8] * count, cameras=("front",), codec="libx264")
        ingest(str(root), name=name, home=home, workers=1)
    instance = dagster_instance(Home(home))
    defs = code_location(Settings(home))
    for name, count in (("six", 6), ("three", 3)):
        for asset in ("telemetry_frame", "decoded_camera_frames", "deeplake_table", "episode_labels"):
            partitions = defs.get_assets_def(dataset_asset_key(name, asset)).partitions_def
            keys = partitions.get_partition_keys(dynamic_partitions_store=instance)
            assert keys == [episode_key(i) for i in range(count)], (name, asset)
        for asset in ("hf_snapshot", "episode_metadata", "training_snapshot", "label_file"):
            assert defs.get_assets_def(dataset_asset_key(name, asset)).partitions_def is None
