"""Pinned copies cannot change under the table: in-place edits, symlinked directories, git subdirectories,
mistyped paths, failed first ingests, and a revision check that reads only what changed."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest
from dagster import AssetKey, DagsterInstance
from PIL import Image

from lerobot_assets.core.errors import LeRobotAssetsError
from lerobot_assets.core.sources import directory_revision
from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.runtime.commands import info, ingest

from tests.conftest import SHARED_FIXTURE, white_block_x
from tests.defs.test_incremental import _git
from tests.support.datasets import shift_actions

DATA = "data/chunk-000/file-000.parquet"
CAMERAS = ("observation.images.cam_high", "observation.images.cam_left_wrist")
EPISODES = [0, 1, 2]


def _copy_fixture(path: Path) -> Path:
    shutil.copytree(SHARED_FIXTURE, path, copy_function=shutil.copyfile)  # the shared files are read-only
    return path


def _actions(result: dict) -> dict[int, np.ndarray]:
    """The table's actions per episode, in frame order."""
    ds = open_read_only(result["table"])
    episode, frame = np.asarray(ds["episode_index"][:]), np.asarray(ds["frame_index"][:])
    action = np.asarray(ds["action"][:])
    return {int(e): action[episode == e][np.argsort(frame[episode == e])] for e in np.unique(episode)}


def _same_actions(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[e], b[e]) for e in a)


def _hashed_bytes(home: Path) -> int:
    event = DagsterInstance.from_config(str(home / "dagster")).get_latest_materialization_event(AssetKey(["robot", "hf_snapshot"]))
    return event.asset_materialization.metadata["bytes_hashed"].value


def test_in_place_edit_then_new_inode_restore_ends_with_the_restored_values(tmp_path: Path) -> None:
    source, home = _copy_fixture(tmp_path / "src"), tmp_path / "home"
    shutil.copyfile(source / DATA, tmp_path / "pristine.parquet")
    first = ingest(str(source), name="robot", home=home, workers=1)
    original = _actions(first)
    pinned = home / "sources" / "robot" / first["revision"] / DATA
    assert pinned.stat().st_ino != (source / DATA).stat().st_ino and pinned.stat().st_nlink == 1  # a copy

    inode = (source / DATA).stat().st_ino
    shift_actions(source, [1])  # pq.write_table to the same path: the same inode, as an editor would
    assert (source / DATA).stat().st_ino == inode
    second = ingest(str(source), name="robot", home=home, workers=1)
    assert second["revision"] != first["revision"] and (second["changed"], second["materialized"]) == ([1], [1])
    assert np.allclose(_actions(second)[1], original[1] + 1.0) and np.array_equal(_actions(second)[0], original[0])

    shutil.copyfile(tmp_path / "pristine.parquet", tmp_path / "restored.parquet")  # cp + mv: a new inode
    os.replace(tmp_path / "restored.parquet", source / DATA)
    third = ingest(str(source), name="robot", home=home, workers=1)
    assert third["revision"] == first["revision"]
    assert (third["changed"], third["unchanged"]) == ([1], [0, 2])
    assert _same_actions(_actions(third), original)

    # A pinned copy changed behind our back (as a hard-linked one did) is checked and copied again.
    shift_actions(home / "sources" / "robot" / first["revision"], [0])
    fourth = ingest(str(source), name="robot", home=home, workers=1)
    assert (fourth["materialized"], fourth["version"], fourth["rows"]) == ([], third["version"], third["rows"])
    assert pinned.read_bytes() == (source / DATA).read_bytes()
    assert _same_actions(_actions(fourth), original)


def _decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_swapped_cameras_behind_a_symlinked_videos_directory_are_a_change(tmp_path: Path) -> None:
    source, home = _copy_fixture(tmp_path / "src"), tmp_path / "home"
    videos = tmp_path / "videos_elsewhere"
    (source / "videos").rename(videos)
    (source / "videos").symlink_to(videos, target_is_directory=True)
    first = ingest(str(source), name="robot", home=home, workers=1)
    assert first["rows"] == 101

    high, wrist = (videos / camera / "chunk-000" / "file-000.mp4" for camera in CAMERAS)
    high.rename(tmp_path / "swap.mp4")
    wrist.rename(high)
    (tmp_path / "swap.mp4").rename(wrist)
    second = ingest(str(source), name="robot", home=home, workers=1)
    assert second["revision"] != first["revision"] and second["changed"] == EPISODES

    ds = open_read_only(second["table"])
    order = np.argsort(np.asarray(ds["index"][:]))  # the fixture's videos hold the episodes in index order
    for camera in CAMERAS:
        expected = _decoded(source / "videos" / camera / "chunk-000" / "file-000.mp4")
        assert len(expected) == len(order) == 101
        for frame, row in zip(expected, order):
            image = np.asarray(Image.open(io.BytesIO(ds[camera].get_bytes(int(row)))).convert("RGB"))
            assert np.abs(image.astype(int) - frame.astype(int)).mean() < 3.0, (camera, row)
            assert white_block_x(image) == white_block_x(frame), (camera, row)


def test_dataset_three_levels_deep_in_a_git_work_tree_committed_and_uncommitted(tmp_path: Path) -> None:
    repo, home = tmp_path / "project", tmp_path / "home"
    source = _copy_fixture(repo / "data" / "robots" / "aloha")
    (repo / "README.md").write_text("a project that keeps its datasets\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "dataset")
    head = _git(repo, "rev-parse", "HEAD")
    first = ingest(str(source), name="deep", home=home, workers=1)
    assert (first["revision"], first["added"], first["rows"]) == (head, EPISODES, 101)
    original = _actions(first)

    shift_actions(source, [2])  # uncommitted: the working tree is ingested, under a content revision
    second = ingest(str(source), name="deep", home=home, workers=1)
    assert second["revision"] not in (head, first["revision"])
    assert second["revision"] == directory_revision(source).revision
    assert (second["changed"], second["unchanged"]) == ([2], [0, 1])
    assert np.allclose(_actions(second)[2], original[2] + 1.0)

    (source / "notes.txt").write_text("untracked, and the edit reverted\n")
    _git(repo, "checkout", "--", ".")
    third = ingest(str(source), name="deep", home=home, workers=1)
    assert third["revision"] not in (head, second["revision"]) and third["changed"] == [2]
    assert _same_actions(_actions(third), original)

    (source / "notes.txt").unlink()
    fourth = ingest(str(source), name="deep", home=home, workers=1)
    assert fourth["revision"] == head and fourth["materialized"] == [] and fourth["version"] == third["version"]


def test_home_inside_the_dataset_directory_is_neither_hashed_nor_copied(tmp_path: Path) -> None:
    """``cd dataset && lerobot-assets ingest .`` keeps the default home ./.lerobot_assets inside the source."""
    source = _copy_fixture(tmp_path / "src")
    home = source / ".lerobot_assets"
    first = ingest(str(source), name="robot", home=home, workers=1)
    assert first["revision"] == directory_revision(_copy_fixture(tmp_path / "same")).revision
    pinned = home / "sources" / "robot" / first["revision"]
    assert sorted(p.name for p in pinned.iterdir()) == ["data", "meta", "videos"]
    again = ingest(str(source), name="robot", home=home, workers=1)
    assert (again["revision"], again["materialized"], again["version"]) == (first["revision"], [], first["version"])


def test_mistyped_local_path_is_no_such_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, home = _copy_fixture(tmp_path / "datasets" / "foo"), tmp_path / "home"
    before = ingest(str(source), name="foo", home=home, workers=1)
    monkeypatch.chdir(tmp_path)
    for typo in ("./datsets/foo", "../datsets/foo", "datsets/foo/", str(tmp_path / "datsets" / "foo"), "~/datsets/foo"):
        with pytest.raises(LeRobotAssetsError) as failure:
            ingest(typo, name="foo", home=home, workers=1)
        assert str(failure.value).startswith(f"no such directory: {typo!r}"), str(failure.value)
        assert "Hub" not in str(failure.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # shaped like a repo id: looked up on the Hub (here: offline)
    with pytest.raises(LeRobotAssetsError, match="nor is it a local directory: no such directory: 'datasets/fooo'"):
        ingest("datasets/fooo", name="typo", home=home, workers=1)
    after = info("foo", home=home)
    assert (after["version"], after["rows"], after["source"]) == (before["version"], before["rows"], str(source))
    assert not (home / "datasets" / "typo.json").exists()


@pytest.mark.parametrize("damage", ["truncated data parquet", "invalid info.json"])
def test_failed_first_ingest_leaves_nothing_registered_and_names_the_users_file(damage: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    before = ingest(str(_copy_fixture(tmp_path / "good")), name="good", home=home, workers=1)
    bad = _copy_fixture(tmp_path / "bad")
    damaged = bad / (DATA if damage == "truncated data parquet" else "meta/info.json")
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(LeRobotAssetsError) as failure:
        ingest(str(bad), name="bad", home=home, workers=1)
    assert repr(str(damaged)) in str(failure.value) and str(home) not in str(failure.value)
    assert not (home / "datasets" / "bad.json").exists()
    assert not (home / "sources" / "bad").exists()
    instance = DagsterInstance.from_config(str(home / "dagster"))
    assert instance.get_dynamic_partitions("bad_episodes") == [] and len(instance.get_dynamic_partitions("good_episodes")) == 3
    after = info("good", home=home)
    assert (after["version"], after["rows"]) == (before["version"], before["rows"])


def test_unchanged_directory_revision_reads_no_file(tmp_path: Path) -> None:
    source, home = _copy_fixture(tmp_path / "src"), tmp_path / "home"
    rng = np.random.default_rng(0)
    for index in range(20):
        (source / "extra" / f"blob-{index:02d}.bin").parent.mkdir(exist_ok=True)
        (source / "extra" / f"blob-{index:02d}.bin").write_bytes(rng.bytes(256 * 1024))
    old = time.time_ns() - 3600 * 10**9  # files last modified an hour ago, as a dataset at rest is
    for path in source.rglob("*"):
        os.utime(path, ns=(old, old))
    record = tmp_path / "record.json"
    first = directory_revision(source, record)
    assert first.files == 27 and first.hashed_files == 27 and first.hashed_bytes == first.bytes > 5_000_000
    second = directory_revision(source, record)
    assert (second.revision, second.hashed_files, second.hashed_bytes) == (first.revision, 0, 0)

    with (source / "extra" / "blob-03.bin").open("r+b") as handle:  # in place, same size
        handle.write(b"edited")
    third = directory_revision(source, record)
    assert third.revision != first.revision and (third.hashed_files, third.hashed_bytes) == (1, 256 * 1024)
    shutil.copy2(SHARED_FIXTURE / DATA, tmp_path / "new.parquet")  # same bytes, a new inode
    os.replace(tmp_path / "new.parquet", source / DATA)
    os.utime(source / "extra" / "blob-03.bin", ns=(old, old))
    fourth = directory_revision(source, record)
    assert fourth.revision == third.revision and fourth.hashed_files == 2  # the new inode, the changed mtime

    # Through an ingest: the second one reads neither the source nor its pinned copy.
    os.utime(source / "extra" / "blob-03.bin", ns=(old, old))
    ingest(str(source), name="robot", home=home, workers=1)
    assert _hashed_bytes(home) > 2 * 5_000_000  # the source, then its fresh copy
    again = ingest(str(source), name="robot", home=home, workers=1)
    assert again["materialized"] == [] and _hashed_bytes(home) == 0
