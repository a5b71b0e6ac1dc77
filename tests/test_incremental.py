"""Only what changed is materialized again: re-ingest at a new revision, removed episodes, the sensor."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from dagster import DagsterInstance, build_sensor_context, materialize

from lerobot_assets.assets import ALL_ASSETS, DATASET_ASSETS, EPISODE_ASSETS
from lerobot_assets.launch import Settings, ingest, snapshot
from lerobot_assets.partitions import episode_partition
from lerobot_assets.sensors import upstream_revision_sensor
from lerobot_assets.synthetic import generate_dataset, shift_actions
from lerobot_assets.table import open_read_only, open_tag

LENGTHS = (9, 11, 8, 10, 12)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


def _make_repo(path: Path) -> Path:
    generate_dataset(path, episode_lengths=LENGTHS, cameras=("front", "wrist"), codec="libx264", episodes_per_file=1)
    _git(path, "init", "-q")
    _git(path, "add", "-A")
    _git(path, "commit", "-qm", "dataset")
    return path


def _edit_actions(repo: Path, episodes: list[int]) -> None:
    """Change the action values of ``episodes`` (a relabel-like upstream edit) and commit."""
    shift_actions(repo, episodes)
    _git(repo, "commit", "-qam", f"edit actions of episodes {episodes}")


def test_reingest_after_upstream_change_redoes_only_changed_episodes(tmp_path: Path) -> None:
    repo = _make_repo(tmp_path / "repo")
    home = tmp_path / "home"
    first = ingest(str(repo), name="gen", home=home, workers=1)
    assert first["added"] == [0, 1, 2, 3, 4] and first["rows"] == sum(LENGTHS)
    assert first["revision"] == _git(repo, "rev-parse", "HEAD")

    _edit_actions(repo, [1, 3])
    second = ingest(str(repo), name="gen", home=home, workers=1)
    assert second["revision"] == _git(repo, "rev-parse", "HEAD") != first["revision"]
    assert (second["changed"], second["added"], second["removed"]) == ([1, 3], [], [])
    assert second["materialized"] == [1, 3] and second["unchanged"] == [0, 2, 4]
    ds = open_read_only(second["table"])
    assert len(ds) == sum(LENGTHS)
    episode = np.asarray(ds["episode_index"][:])
    frame_index = np.asarray(ds["frame_index"][:])
    action = np.asarray(ds["action"][:])
    state = np.asarray(ds["observation.state"][:])
    expected_offset = np.where(np.isin(episode, [1, 3]), 1.0, 0.0)[:, None]
    assert np.allclose(action - state, 0.01 * frame_index[:, None] + expected_offset, atol=1e-5)

    third = ingest(str(repo), name="gen", home=home, workers=1)
    assert third["materialized"] == [] and third["version"] == second["version"]


def test_removed_episode_leaves_head_but_stays_in_earlier_tag(tmp_path: Path) -> None:
    repo = _make_repo(tmp_path / "repo")
    home = tmp_path / "home"
    ingest(str(repo), name="gen", home=home, workers=1)
    before = snapshot("gen", tag="before-removal", home=home)
    # Upstream drops the last episode: regenerate with one episode fewer and commit.
    fewer = generate_dataset(tmp_path / "fewer", episode_lengths=LENGTHS[:4], cameras=("front", "wrist"),
                             codec="libx264", episodes_per_file=1)
    for child in repo.iterdir():
        if child.name != ".git":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    shutil.copytree(fewer, repo, dirs_exist_ok=True)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "drop episode 4")
    result = ingest(str(repo), name="gen", home=home, workers=1)
    assert result["removed"] == [4] and result["materialized"] == [] and result["episodes"] == [0, 1, 2, 3]
    assert result["rows"] == sum(LENGTHS[:4])
    old = open_tag(result["table"], "before-removal")
    assert len(old) == sum(LENGTHS) == before["rows"]
    assert sorted(set(np.asarray(old["episode_index"][:]).tolist())) == [0, 1, 2, 3, 4]


def _resources(home: Path) -> dict:
    return Settings(home).resources()


def test_sensor_requests_exactly_the_changed_episodes(tmp_path: Path) -> None:
    repo = _make_repo(tmp_path / "repo")
    home = tmp_path / "home"
    ingest(str(repo), name="gen", home=home, workers=1)
    instance = DagsterInstance.from_config(str(home / "dagster"))
    resources = _resources(home)

    def tick(cursor: str | None):
        context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        return upstream_revision_sensor(context)

    # First tick after an ingest: revision already materialized, every episode up to date.
    result = tick(None)
    assert result.run_requests == []
    cursor = result.cursor

    _edit_actions(repo, [1, 3])
    head = _git(repo, "rev-parse", "HEAD")
    result = tick(cursor)
    assert [(r.partition_key, sorted(k.to_user_string() for k in r.asset_selection)) for r in result.run_requests] == [
        ("gen", ["episode_metadata", "hf_snapshot"])
    ]
    assert result.run_requests[0].tags["lerobot_assets/revision"] == head
    cursor = result.cursor
    assert tick(cursor).run_requests == []  # requested once per revision, not on every tick

    materialize(ALL_ASSETS, selection=DATASET_ASSETS, partition_key="gen", instance=instance, resources=resources)
    result = tick(cursor)
    assert sorted(r.partition_key for r in result.run_requests) == [
        str(episode_partition("gen", 1)), str(episode_partition("gen", 3))
    ]
    assert {k.to_user_string() for k in result.run_requests[0].asset_selection} == {k.to_user_string() for a in EPISODE_ASSETS for k in a.keys}
    cursor = result.cursor
    for request in result.run_requests:
        materialize(ALL_ASSETS, selection=EPISODE_ASSETS, partition_key=request.partition_key, instance=instance,
                    resources=resources)
    assert tick(cursor).run_requests == []  # no new commit: nothing to do


def test_sensor_skips_unreachable_source(tmp_path: Path) -> None:
    repo = _make_repo(tmp_path / "repo")
    home = tmp_path / "home"
    ingest(str(repo), name="gen", home=home, workers=1)
    instance = DagsterInstance.from_config(str(home / "dagster"))
    shutil.rmtree(repo)
    result = upstream_revision_sensor(build_sensor_context(instance=instance, resources=_resources(home)))
    assert result.run_requests == []
    assert "unreachable" in result.skip_reason.skip_message and "gen" in result.skip_reason.skip_message


def test_interrupted_backfill_resumes_with_only_unfinished_episodes(tmp_path: Path) -> None:
    source = generate_dataset(tmp_path / "src", episode_lengths=LENGTHS, cameras=("front",), codec="libx264",
                              episodes_per_file=1, files_per_chunk=10)
    video = source / "videos/observation.images.front/chunk-000/file-003.mp4"
    intact = video.read_bytes()
    video.write_bytes(intact[: len(intact) // 3])  # episode 3 cannot finish: the backfill stops short of it
    home = tmp_path / "home"
    try:
        ingest(str(source), name="gen", home=home, episodes=[1, 2, 3, 4], workers=1)
    except Exception as exc:  # noqa: BLE001 - the failure is the point
        assert "episode 3" in str(exc)
    else:
        raise AssertionError("the backfill should have failed on episode 3")
    partial = open_read_only(str(home / "tables" / "gen"))
    assert sorted(set(np.asarray(partial["episode_index"][:]).tolist())) == [1, 2, 4]

    video.write_bytes(intact)
    resumed = ingest(str(source), name="gen", home=home, episodes=[1, 2, 3, 4], workers=1)
    assert resumed["materialized"] == [3] and resumed["unchanged"] == [1, 2, 4]
    assert resumed["episodes"] == [1, 2, 3, 4] and resumed["rows"] == sum(LENGTHS[1:])


def _materialize_every_episode(instance: DagsterInstance, home: Path, episodes: range) -> list:
    """What a UI "Materialize all" does: the dataset assets, then every episode partition, no planning."""
    resources = _resources(home)
    assert materialize(ALL_ASSETS, selection=DATASET_ASSETS, partition_key="gen", instance=instance, resources=resources).success
    results = []
    for index in episodes:
        result = materialize(ALL_ASSETS, selection=EPISODE_ASSETS, partition_key=str(episode_partition("gen", index)),
                             instance=instance, resources=resources)
        assert result.success
        results.append(result)
    return results


def _table_metadata(result, key: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


def test_materializing_every_partition_rewrites_only_changed_episodes(tmp_path: Path) -> None:
    """Change-only inside the episode asset: a plain Dagster run of every partition (as a UI backfill
    or `dagster asset materialize` makes) leaves an unchanged table alone and rewrites exactly the
    episode whose telemetry was edited upstream; the comparison reads only the table's record."""
    repo = _make_repo(tmp_path / "repo")
    home = tmp_path / "home"
    first = ingest(str(repo), name="gen", home=home, workers=1)
    instance = DagsterInstance.from_config(str(home / "dagster"))
    results = _materialize_every_episode(instance, home, range(len(LENGTHS)))
    ds = open_read_only(first["table"])
    assert ds.version == first["version"]
    assert all(_table_metadata(r, "deeplake_table")["unchanged"] for r in results)
    checks = [e for r in results for e in r.get_asset_check_evaluations() if e.check_name == "episode_rows_match"]
    assert len(checks) == len(LENGTHS) and all(c.passed for c in checks)

    _edit_actions(repo, [2])
    results = _materialize_every_episode(instance, home, range(len(LENGTHS)))
    written = [i for i, r in enumerate(results) if not _table_metadata(r, "deeplake_table").get("unchanged")]
    assert written == [2]
    ds = open_read_only(first["table"])
    assert ds.version != first["version"]
    assert [c.message for c in ds.history][-1].startswith("ingest gen episode 2 at revision")
    assert len(ds) == sum(LENGTHS)
