"""Only what changed is materialized again: re-ingest at a new revision, removed episodes, the sensor."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from dagster import DagsterInstance, build_sensor_context

from lerobot_assets.core.table.access import open_read_only, open_tag
from lerobot_assets.definitions import build_definitions
from lerobot_assets.defs.partitions import dataset_asset_key, range_tags
from lerobot_assets.runtime.commands import ingest, snapshot
from lerobot_assets.runtime.runner import Settings
from lerobot_assets.testing.synthetic import generate_dataset

from tests.support.datasets import shift_actions

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


def _run(instance: DagsterInstance, home: Path, use: str, tags: dict | None = None, partition: str | None = None):
    """A plain run of the ``gen`` dataset's job for ``use``, as the UI or the daemon launches it."""
    job = build_definitions(_resources(home), ["gen"]).resolve_job_def(f"gen__{use}")
    result = job.execute_in_process(instance=instance, tags=tags, partition_key=partition)
    assert result.success
    return result


def _sensor(home: Path):
    return build_definitions(_resources(home), ["gen"]).resolve_sensor_def("upstream_revision_sensor")


def test_sensor_requests_exactly_the_changed_episodes(tmp_path: Path) -> None:
    repo = _make_repo(tmp_path / "repo")
    home = tmp_path / "home"
    ingest(str(repo), name="gen", home=home, workers=1)
    instance = DagsterInstance.from_config(str(home / "dagster"))
    resources, sensor = _resources(home), _sensor(home)

    def tick(cursor: str | None):
        return sensor(build_sensor_context(instance=instance, cursor=cursor, resources=resources))

    # First tick after an ingest: revision already materialized, every episode up to date.
    result = tick(None)
    assert result.run_requests == []
    cursor = result.cursor

    _edit_actions(repo, [1, 3])
    head = _git(repo, "rev-parse", "HEAD")
    result = tick(cursor)
    assert [(r.job_name, r.partition_key) for r in result.run_requests] == [("gen__ingest_dataset", None)]
    assert result.run_requests[0].tags["lerobot_assets/revision"] == head
    cursor = result.cursor
    assert tick(cursor).run_requests == []  # requested once per revision, not on every tick

    _run(instance, home, "ingest_dataset")
    result = tick(cursor)
    # every episode is compared (the unchanged ones are recorded as such, so none stays out of sync), in one range run
    assert [(r.job_name, r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
            for r in result.run_requests] == [("gen__ingest_episodes", "000000", "000004")]
    cursor = result.cursor
    written = _table_metadata(_run(instance, home, "ingest_episodes", tags=dict(result.run_requests[0].tags)), "gen")
    assert written == {0: True, 1: False, 2: True, 3: False, 4: True}
    ds = open_read_only(str(home / "tables" / "gen"))
    # one commit per run: the first ingest's, then this run's (the two replaced episodes, indexes recreated)
    assert [c.message.split(" at ")[0] for c in ds.history][-3:] == [
        "create table for dataset gen", "ingest gen episodes 0-4", "ingest gen episodes [1, 3]"
    ]
    assert ds.history[len(ds.history) - 1].message.endswith("recreated")
    assert tick(cursor).run_requests == []  # no new commit: nothing to do


def test_sensor_skips_unreachable_source(tmp_path: Path) -> None:
    repo = _make_repo(tmp_path / "repo")
    home = tmp_path / "home"
    ingest(str(repo), name="gen", home=home, workers=1)
    instance = DagsterInstance.from_config(str(home / "dagster"))
    shutil.rmtree(repo)
    result = _sensor(home)(build_sensor_context(instance=instance, resources=_resources(home)))
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


def _materialize_every_episode(instance: DagsterInstance, home: Path) -> dict[int, bool]:
    """What a UI "Materialize all" does: the dataset assets, then a backfill of every episode
    partition in one range run, no planning. Returns {episode: recorded as unchanged}."""
    _run(instance, home, "ingest_dataset")
    keys = instance.get_dynamic_partitions("gen_episodes")
    return _table_metadata(_run(instance, home, "ingest_episodes", tags=range_tags(keys)), "gen")


def _table_metadata(result, dataset: str) -> dict[int, bool]:
    """{episode: recorded as unchanged} of the ``deeplake_table`` materializations of ``result``'s run."""
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == dataset_asset_key(dataset, "deeplake_table")]
    return {int(e.partition): e.event_specific_data.materialization.metadata["unchanged"].value for e in events}


def test_materializing_every_partition_rewrites_only_changed_episodes(tmp_path: Path) -> None:
    """Change-only inside the episode asset: a plain Dagster run of every partition (as a UI backfill
    or `dagster asset materialize` makes) leaves an unchanged table alone and rewrites exactly the
    episode whose telemetry was edited upstream; the comparison reads only the table's record."""
    repo = _make_repo(tmp_path / "repo")
    home = tmp_path / "home"
    first = ingest(str(repo), name="gen", home=home, workers=1)
    instance = DagsterInstance.from_config(str(home / "dagster"))
    assert _materialize_every_episode(instance, home) == {i: True for i in range(len(LENGTHS))}
    ds = open_read_only(first["table"])
    assert ds.version == first["version"]

    _edit_actions(repo, [2])
    unchanged = _materialize_every_episode(instance, home)
    assert [i for i, same in unchanged.items() if not same] == [2]
    ds = open_read_only(first["table"])
    assert ds.version != first["version"]
    messages = [c.message for c in ds.history]
    # one commit for the run: episode 2's rows and the indexes recreated after its delete
    assert messages[-1].startswith("ingest gen episodes [2] at revision") and messages[-1].endswith("recreated")
    assert messages[-2].startswith("ingest gen episodes 0-4 at revision")
    assert len(ds) == sum(LENGTHS)
