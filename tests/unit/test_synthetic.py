"""The synthetic datasets must look exactly like what lerobot writes, and their frames must be findable."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lerobot_assets.testing.synthetic import BLOCK_SIZE, block_x, block_y, episode_telemetry, generate_dataset, render_frame

FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "lerobot_v30_small"
FIXTURE_FILES = ("data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet", "meta/tasks.parquet")
LENGTHS = (12, 9, 11, 8, 10)


@pytest.fixture(scope="module")
def v30(tmp_path_factory) -> Path:
    """Same shape as the fixture: 3 episodes, 2 cameras, all in one file."""
    return generate_dataset(tmp_path_factory.mktemp("v30") / "ds", episodes_per_file=3)


@pytest.fixture(scope="module")
def spread(tmp_path_factory) -> Path:
    """5 episodes, 2 per file, 2 files per chunk: chunk-000/file-000, file-001, chunk-001/file-000."""
    return generate_dataset(tmp_path_factory.mktemp("spread") / "ds", episode_lengths=LENGTHS, cameras=("a", "b", "c"))


@pytest.fixture(scope="module")
def v21(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("v21") / "ds", version="v2.1", episode_lengths=LENGTHS,
                            cameras=("top",))


def load_json(path: Path):
    return json.loads(path.read_text())


def episodes_frame(root: Path) -> pd.DataFrame:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def locate_block(image: np.ndarray) -> int:
    """Left edge of the white block: the first column bright in every channel on most block rows."""
    bright = image.min(axis=2) > 200
    columns = np.flatnonzero(bright.sum(axis=0) >= BLOCK_SIZE // 2)
    assert len(columns), "no white block in the frame"
    return int(columns[0])


def decode_at(path: Path, timestamp: float) -> av.VideoFrame:
    """The frame shown at ``timestamp``: seek to the keyframe before it, then decode forward."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(int(timestamp / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.time >= timestamp - 1e-6:
                return frame
    raise AssertionError(f"nothing to decode at {timestamp} in {path}")


def test_render_frame_block_and_cameras():
    image = render_frame(5, 0, 96, 128)
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    assert locate_block(image) == block_x(5, 128) == 35
    top = block_y(96)
    assert (image[top : top + BLOCK_SIZE, 35 : 35 + BLOCK_SIZE] == 255).all()
    assert image[top - 1, 35:65].min(axis=1).max() < 200  # nothing else is white
    assert not np.array_equal(render_frame(5, 0, 96, 128), render_frame(5, 1, 96, 128))
    assert not np.array_equal(render_frame(5, 0, 96, 128), render_frame(6, 0, 96, 128))


def test_v30_matches_fixture_schema(v30):
    for name in FIXTURE_FILES:
        expected = pq.read_schema(FIXTURE / name)
        actual = pq.read_schema(v30 / name)
        assert actual.names == expected.names, name
        assert actual.types == expected.types, name
    assert pq.read_schema(v30 / FIXTURE_FILES[0]).metadata.keys() == {b"huggingface"}

    expected_info, info = load_json(FIXTURE / "meta/info.json"), load_json(v30 / "meta/info.json")
    assert list(info) == list(expected_info)
    assert info["features"] == expected_info["features"]
    for key in ("codebase_version", "total_episodes", "total_frames", "total_tasks", "fps", "splits", "data_path",
                "video_path"):
        assert info[key] == expected_info[key], key

    expected_stats, stats = load_json(FIXTURE / "meta/stats.json"), load_json(v30 / "meta/stats.json")
    assert sorted(stats) == sorted(expected_stats)
    for key, feature in stats.items():
        assert list(feature) == list(expected_stats[key]), key
        for name, value in feature.items():
            assert np.shape(value) == np.shape(expected_stats[key][name]), (key, name)
    assert sorted(p.relative_to(v30) for p in v30.rglob("*.*")) == sorted(p.relative_to(FIXTURE) for p in
                                                                           FIXTURE.rglob("*.*"))


def test_v30_rows_follow_the_formulas(v30):
    data = pd.read_parquet(v30 / "data/chunk-000/file-000.parquet")
    assert len(data) == 37 + 33 + 31
    assert data["index"].tolist() == list(range(len(data)))
    episode = data[data.episode_index == 1]
    assert episode["frame_index"].tolist() == list(range(33))
    assert episode["task_index"].unique().tolist() == [1]
    np.testing.assert_array_equal(episode["timestamp"], (np.arange(33) / 30).astype(np.float32))
    state = np.stack(episode["observation.state"])
    expected = episode_telemetry(1, 33, fps=30, state_dim=6)
    for key in ("observation.state", "action", "observation.effort"):
        np.testing.assert_array_equal(np.stack(episode[key]), expected[key])
    steps = np.repeat(np.arange(33)[:, None] * 0.01, 6, axis=1)
    np.testing.assert_allclose(np.stack(episode["action"]) - state, steps, atol=1e-6)
    np.testing.assert_allclose(np.stack(episode["observation.effort"]), np.cos(state), atol=1e-6)
    base = state[0] - np.sin(0.3 * np.arange(6))
    np.testing.assert_allclose(state, base + np.sin(np.arange(33)[:, None] / 30 + 0.3 * np.arange(6)), atol=1e-6)

    tasks = pd.read_parquet(v30 / "meta/tasks.parquet")
    assert tasks.index.tolist() == ["Pick up the shrimp", "Wipe the table", "Open the drawer"]
    assert tasks["task_index"].tolist() == [0, 1, 2]


def test_v30_stats(v30):
    data = pd.read_parquet(v30 / "data/chunk-000/file-000.parquet")
    stats = load_json(v30 / "meta/stats.json")
    state = np.stack(data["observation.state"]).astype(np.float64)
    np.testing.assert_allclose(stats["observation.state"]["min"], state.min(axis=0))
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(axis=0))
    assert stats["index"]["count"] == [101] and stats["index"]["max"] == [100]
    camera = stats["observation.images.cam_high"]
    assert camera["count"] == [101] and np.shape(camera["mean"]) == (3, 1, 1)
    assert camera["max"] == [[[1.0]], [[1.0]], [[1.0]]]  # the white block
    assert 0 < np.min(camera["std"]) and np.max(camera["mean"]) < 1

    episodes = episodes_frame(v30)
    first = data[data.episode_index == 0]
    assert episodes["stats/frame_index/max"][0].tolist() == [36]
    assert episodes["stats/observation.images.cam_high/count"].map(list).tolist() == [[37], [33], [31]]
    np.testing.assert_allclose(list(episodes["stats/action/max"][0]), np.stack(first["action"]).max(axis=0))


def test_v30_spread_over_files_and_chunks(spread):
    expected_files = ["chunk-000/file-000", "chunk-000/file-001", "chunk-001/file-000"]
    for name in expected_files:
        assert (spread / f"data/{name}.parquet").is_file()
        assert (spread / f"meta/episodes/{name}.parquet").is_file()
        for camera in ("a", "b", "c"):
            assert (spread / f"videos/observation.images.{camera}/{name}.mp4").is_file()
    assert len(list(spread.rglob("*.parquet"))) == 2 * len(expected_files) + 1  # + meta/tasks.parquet

    info = load_json(spread / "meta/info.json")
    assert info["chunks_size"] == 2 and info["total_episodes"] == 5 and info["total_frames"] == sum(LENGTHS)
    assert info["total_tasks"] == 3 and info["splits"] == {"train": "0:5"}

    episodes = episodes_frame(spread)
    assert episodes["episode_index"].tolist() == [0, 1, 2, 3, 4]
    assert episodes["data/chunk_index"].tolist() == [0, 0, 0, 0, 1]
    assert episodes["data/file_index"].tolist() == [0, 0, 1, 1, 0]
    assert episodes["meta/episodes/file_index"].tolist() == [0, 0, 1, 1, 0]
    assert episodes["videos/observation.images.b/file_index"].tolist() == [0, 0, 1, 1, 0]
    assert episodes["dataset_from_index"].tolist() == [0, *np.cumsum(LENGTHS)[:-1]]
    assert episodes["dataset_to_index"].tolist() == list(np.cumsum(LENGTHS))
    assert episodes["tasks"].map(list).tolist() == [["Pick up the shrimp"], ["Wipe the table"], ["Open the drawer"],
                                                     ["Pick up the shrimp"], ["Wipe the table"]]
    from_ts = episodes["videos/observation.images.a/from_timestamp"].tolist()
    to_ts = episodes["videos/observation.images.a/to_timestamp"].tolist()
    assert from_ts == [0.0, 12 / 30, 0.0, 11 / 30, 0.0]
    assert to_ts == [12 / 30, 21 / 30, 11 / 30, 19 / 30, 10 / 30]

    for _, row in episodes.iterrows():
        path = spread / info["data_path"].format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        rows = pd.read_parquet(path, filters=[("episode_index", "=", row["episode_index"])])
        assert rows["index"].tolist() == list(range(row["dataset_from_index"], row["dataset_to_index"]))
    assert pq.ParquetFile(spread / "data/chunk-000/file-001.parquet").num_row_groups == 2  # one per episode


@pytest.mark.parametrize("episode", [1, 3])
def test_v30_frames_decode_at_their_timestamps(spread, episode):
    info = load_json(spread / "meta/info.json")
    row = episodes_frame(spread).iloc[episode]
    for camera_index, camera in enumerate(("a", "b", "c")):
        key = f"observation.images.{camera}"
        path = spread / info["video_path"].format(
            video_key=key, chunk_index=row[f"videos/{key}/chunk_index"], file_index=row[f"videos/{key}/file_index"]
        )
        for k in (0, 1, 5, LENGTHS[episode] - 1):
            timestamp = row[f"videos/{key}/from_timestamp"] + k / 30
            frame = decode_at(path, timestamp)
            assert frame.pts * frame.time_base == Fraction(round(timestamp * 30), 30)
            image = frame.to_ndarray(format="rgb24")
            assert abs(locate_block(image) - block_x(k, 128)) <= 2, (camera, k)
            assert np.abs(image.astype(int) - render_frame(k, camera_index, 96, 128)).mean() < 12


def test_v30_video_stream(v30):
    with av.open(str(v30 / "videos/observation.images.cam_high/chunk-000/file-000.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("libdav1d", "av1")
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (128, 96)
        assert stream.average_rate == 30
        frames = list(container.decode(stream))
    assert [f.pts * f.time_base for f in frames] == [Fraction(k, 30) for k in range(101)]
    keyframes = [k for k, f in enumerate(frames) if f.key_frame]
    assert {0, 37, 70} <= set(keyframes)  # every episode starts on a keyframe
    assert max(np.diff(keyframes)) <= 30


def test_v21_layout(v21):
    info = load_json(v21 / "meta/info.json")
    assert info["codebase_version"] == "v2.1"
    assert info["data_path"] == "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    assert info["video_path"] == "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    assert (info["total_chunks"], info["chunks_size"], info["total_videos"]) == (3, 2, 5)

    episodes = [json.loads(line) for line in (v21 / "meta/episodes.jsonl").read_text().splitlines()]
    assert episodes[3] == {"episode_index": 3, "tasks": ["Pick up the shrimp"], "length": 8}
    tasks = [json.loads(line) for line in (v21 / "meta/tasks.jsonl").read_text().splitlines()]
    assert tasks == [{"task_index": 0, "task": "Pick up the shrimp"}, {"task_index": 1, "task": "Wipe the table"},
                     {"task_index": 2, "task": "Open the drawer"}]
    episode_stats = [json.loads(line) for line in (v21 / "meta/episodes_stats.jsonl").read_text().splitlines()]
    assert [s["episode_index"] for s in episode_stats] == [0, 1, 2, 3, 4]
    assert list(episode_stats[2]["stats"]["observation.images.top"]) == ["min", "max", "mean", "std", "count"]
    assert episode_stats[2]["stats"]["frame_index"]["count"] == [11]
    assert list(load_json(v21 / "meta/stats.json")["action"]) == ["min", "max", "mean", "std", "count"]

    start = 0
    for index, length in enumerate(LENGTHS):
        chunk = index // 2
        data = pd.read_parquet(v21 / info["data_path"].format(episode_chunk=chunk, episode_index=index))
        assert data["frame_index"].tolist() == list(range(length))
        assert data["timestamp"].iloc[0] == 0.0
        assert data["index"].tolist() == list(range(start, start + length))
        start += length
        video = v21 / info["video_path"].format(episode_chunk=chunk, video_key="observation.images.top",
                                                episode_index=index)
        with av.open(str(video)) as container:
            frames = list(container.decode(video=0))
        assert len(frames) == length and frames[0].pts == 0
        assert locate_block(frames[-1].to_ndarray(format="rgb24")) == pytest.approx(block_x(length - 1, 128), abs=2)
    assert pq.read_schema(v21 / "data/chunk-000/episode_000000.parquet").types == \
        pq.read_schema(FIXTURE / FIXTURE_FILES[0]).types


def test_without_effort_and_with_h264(tmp_path):
    root = generate_dataset(tmp_path / "ds", episode_lengths=(20, 15), cameras=("wrist",), effort=False,
                            codec="libx264", height=64, width=96, state_dim=3)
    info = load_json(root / "meta/info.json")
    assert "observation.effort" not in info["features"]
    assert "observation.effort" not in load_json(root / "meta/stats.json")
    assert "observation.effort" not in pq.read_schema(root / "data/chunk-000/file-000.parquet").names
    assert not any("effort" in name for name in episodes_frame(root).columns)
    assert info["features"]["action"]["shape"] == [3]
    assert info["features"]["observation.images.wrist"]["info"]["video.codec"] == "h264"

    video = root / "videos/observation.images.wrist/chunk-000/file-000.mp4"
    with av.open(str(video)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    for k in (0, 7, 14):
        image = decode_at(video, 20 / 30 + k / 30).to_ndarray(format="rgb24")
        assert image.shape == (64, 96, 3)
        assert abs(locate_block(image) - block_x(k, 96)) <= 2


def test_rejects_bad_options(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path / "busy")
    with pytest.raises(ValueError, match="even"):
        generate_dataset(tmp_path / "odd", height=95)
    with pytest.raises(ValueError, match="version"):
        generate_dataset(tmp_path / "old", version="v1.6")
    assert not (tmp_path / "odd").exists()
