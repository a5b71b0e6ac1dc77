"""Normalization stats against what the official lerobot library wrote for the shared fixture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import deeplake
import numpy as np
import pandas as pd
import pytest

from lerobot_assets.core.lerobot.meta import read_dataset
from lerobot_assets.core.lerobot.stats import (
    aggregate_stats,
    channel_counts,
    episode_stats,
    image_stats_from_counts,
    sample_indices,
    stats_from_json,
    stats_to_json,
)
from lerobot_assets.core.lerobot.telemetry import read_episode_telemetry
from lerobot_assets.core.media.codec import encode_image
from lerobot_assets.core.media.video import decode_episode
from lerobot_assets.core.table.episode_stats import STATS_COLUMN, load_stats, stats_cells
from lerobot_assets.testing.synthetic import render_frame

from tests.support.stats import image_stats

CAMERAS = ("observation.images.cam_high", "observation.images.cam_left_wrist")
NUMERIC = ("observation.state", "action", "observation.effort", "timestamp", "frame_index", "episode_index", "index",
           "task_index")
FPS = 30
QUANTILES = ("q01", "q10", "q50", "q90", "q99")


def _nested(value: object) -> object:
    """Parquet's nested object arrays as plain lists."""
    return [_nested(v) for v in value] if isinstance(value, (list, np.ndarray)) else value


def _episode_values(official: Path, float64_timestamps: bool) -> dict[int, dict[str, np.ndarray]]:
    """Each episode's numeric columns as LeRobot's recorder held them (or as the table stores them)."""
    rows = pd.read_parquet(official / "data" / "chunk-000" / "file-000.parquet")
    out = {}
    for episode, group in rows.groupby("episode_index"):
        values = {key: np.stack(group[key].to_numpy()) for key in NUMERIC}
        if float64_timestamps:  # lerobot's add_frame records frame_index / fps as Python floats
            values["timestamp"] = values["frame_index"] / FPS
        out[int(episode)] = values
    return out


def _lerobot_episode_stats(official: Path) -> dict[int, dict[str, dict[str, np.ndarray]]]:
    table = pd.read_parquet(official / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    out: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for _, row in table.iterrows():
        per: dict[str, dict[str, np.ndarray]] = {}
        for column in (c for c in table.columns if c.startswith("stats/")):
            key, name = column[len("stats/"):].rsplit("/", 1)
            per.setdefault(key, {})[name] = np.array(_nested(row[column]), dtype=np.float64)
        out[int(row["episode_index"])] = per
    return out


def _stats_json(official: Path) -> dict[str, dict[str, np.ndarray]]:
    return stats_from_json(json.loads((official / "meta" / "stats.json").read_text()))


def _assert_close(ours: dict, theirs: dict, keys: tuple[str, ...], atol: float, skip: tuple[str, ...] = ()) -> None:
    for key in keys:
        assert set(ours[key]) == set(theirs[key]), key
        for name, expected in theirs[key].items():
            if name in skip:
                continue
            got = np.asarray(ours[key][name], dtype=np.float64)
            assert got.shape == np.shape(expected), (key, name, got.shape)
            np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=f"{key} {name}")


def test_numeric_episode_stats_are_lerobots_exactly(official_dataset: Path) -> None:
    expected = _lerobot_episode_stats(official_dataset)
    for episode, values in _episode_values(official_dataset, float64_timestamps=True).items():
        _assert_close(episode_stats(values), expected[episode], NUMERIC, atol=1e-9)


def test_aggregated_numeric_stats_are_stats_json_including_its_odd_quantiles(official_dataset: Path) -> None:
    per_episode = [episode_stats(v) for v in _episode_values(official_dataset, float64_timestamps=True).values()]
    aggregated = aggregate_stats(per_episode)
    reference = _stats_json(official_dataset)
    _assert_close(aggregated, reference, NUMERIC, atol=1e-9)
    # LeRobot averages the episodes' quantiles weighted by frame count: a feature constant within each
    # episode gets its mean as every quantile, and q01 of a frame counter is its first bin's lower edge.
    for q in QUANTILES:
        assert aggregated["task_index"][q][0] == pytest.approx(aggregated["task_index"]["mean"][0], abs=1e-12)
    assert aggregated["task_index"]["mean"][0] == pytest.approx(95 / 101)
    assert aggregated["frame_index"]["q01"][0] == pytest.approx(-1e-10, abs=1e-15)
    assert aggregated["timestamp"]["q01"][0] == pytest.approx(-1e-10, abs=1e-15)


def test_stats_from_table_dtypes_match_within_float32(official_dataset: Path) -> None:
    """The table stores timestamps as float32 (as the parquet does); LeRobot's recorder had float64.

    In float32 the 5000 histogram bins have other edges, so quantiles may move by up to a bin.
    """
    per_episode = [episode_stats(v) for v in _episode_values(official_dataset, float64_timestamps=False).values()]
    aggregated, reference = aggregate_stats(per_episode), _stats_json(official_dataset)
    _assert_close(aggregated, reference, NUMERIC, atol=1e-6, skip=QUANTILES)
    _assert_close(aggregated, reference, ("timestamp",), atol=1.2 / 5000, skip=("min", "max", "mean", "std", "count"))


@pytest.fixture(scope="module")
def camera_frames(official_dataset: Path) -> dict[str, list[bytes]]:
    """Every frame of each camera decoded from the fixture's MP4s and stored as the ingest stores it (JPEG 95)."""
    out = {}
    for camera in CAMERAS:
        with av.open(str(official_dataset / "videos" / camera / "chunk-000" / "file-000.mp4")) as container:
            decoded = container.decode(container.streams.video[0])
            out[camera] = [encode_image(frame.to_ndarray(format="rgb24")) for frame in decoded]
    return out


def test_camera_stats_reproduce_lerobot_from_decoded_frames(official_dataset: Path, camera_frames: dict) -> None:
    """LeRobot took image stats from the frames before AV1 encoding; ours come from the decoded frames."""
    expected = _lerobot_episode_stats(official_dataset)
    lengths = {e: int(v["count"][0]) for e, v in ((e, s["observation.state"]) for e, s in expected.items())}
    per_episode, start = [], 0
    for episode in sorted(lengths):
        images = {cam: frames[start : start + lengths[episode]] for cam, frames in camera_frames.items()}
        ours = {camera: image_stats(frames) for camera, frames in images.items()}
        start += lengths[episode]
        for camera in CAMERAS:
            # x**2 wraps around in uint8 in LeRobot's running stats, so every episode's image std is 0.
            assert np.array_equal(ours[camera]["std"], np.zeros((3, 1, 1))), camera
            assert ours[camera]["count"].tolist() == [lengths[episode]]  # fewer than 100 frames: all sampled
        # Compression moves a channel's extremes by a few levels (up to 7/255 here), its mean and quantiles less.
        _assert_close(ours, expected[episode], CAMERAS, atol=10 / 255)
        _assert_close(ours, expected[episode], CAMERAS, atol=0.01, skip=("min", "max"))
        per_episode.append(ours)
    aggregated = aggregate_stats(per_episode)
    reference = _stats_json(official_dataset)
    _assert_close(aggregated, reference, CAMERAS, atol=0.01, skip=("std",))
    for camera in CAMERAS:  # only the spread between episode means is left
        np.testing.assert_allclose(aggregated[camera]["std"], reference[camera]["std"], atol=1e-3)


def test_decoder_stats_are_the_stats_of_the_frames_before_jpeg(official_dataset: Path) -> None:
    """Ingest takes image stats from the frames it decodes, before JPEG: the same numbers as counting
    the sampled frames of an independent PyAV decode."""
    meta = read_dataset(official_dataset)
    telemetry = read_episode_telemetry(meta, 1)
    decoded = decode_episode(meta, 1, telemetry["timestamp"].to_numpy())
    first = int(telemetry["index"][0].as_py())  # all episodes share one file per camera, back to back
    for camera in CAMERAS:
        with av.open(str(official_dataset / "videos" / camera / "chunk-000" / "file-000.mp4")) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
        episode = frames[first : first + telemetry.num_rows]
        sampled = sample_indices(len(episode))
        expected = image_stats_from_counts(sum(channel_counts(episode[i]) for i in sampled), len(sampled))
        assert set(decoded[camera].stats) == set(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(decoded[camera].stats[name], value, err_msg=f"{camera} {name}")
        lossless = image_stats([encode_image(f, "png") for f in episode])
        np.testing.assert_array_equal(lossless["mean"], expected["mean"])  # the bytes path agrees


def test_image_stats_sample_and_thin_frames_like_lerobot() -> None:
    assert sample_indices(37) == list(range(37))
    assert len(sample_indices(1000)) == 177 and sample_indices(1000)[-1] == 999
    frames = [render_frame(i, 0, 480, 640) for i in range(150)]
    encoded = [encode_image(frame, "png") for frame in frames]  # lossless, so the pixels are known
    stats = image_stats(encoded)
    used = np.stack([frames[i][::4, ::4] for i in sample_indices(150)])  # 640 px wide: every 4th pixel
    assert stats["count"].tolist() == [100] == [len(used)]
    assert stats["mean"].shape == (3, 1, 1)
    np.testing.assert_allclose(stats["mean"].ravel(), used.reshape(-1, 3).mean(axis=0) / 255, rtol=1e-12)
    np.testing.assert_array_equal(stats["max"].ravel(), used.reshape(-1, 3).max(axis=0) / 255)


def test_single_frame_episode_and_text_values() -> None:
    stats = episode_stats({"x": np.array([[1.0, 2.0]], np.float32), "task": ["Wipe the table"]})
    assert set(stats) == {"x"}  # text is skipped, as LeRobot skips string features
    assert stats["x"]["q50"].tolist() == stats["x"]["mean"].tolist() == [1.0, 2.0]
    assert stats["x"]["count"].tolist() == [1]


def test_stored_stats_follow_the_table_versions(tmp_path: Path) -> None:
    first = episode_stats({"x": np.arange(10.0)})
    second = episode_stats({"x": np.arange(5.0) + 3})
    ds = deeplake.create(str(tmp_path / "table"))
    ds.add_column("episode_index", deeplake.types.Int64())
    ds.add_column(STATS_COLUMN, deeplake.types.Text())
    ds.append({"episode_index": [0] * 10, STATS_COLUMN: stats_cells(first, 10)})
    ds.commit("episode 0")
    ds.tag("one")
    ds.append({"episode_index": [4] * 5, STATS_COLUMN: stats_cells(second, 5)})
    ds.append({"episode_index": [5] * 2, STATS_COLUMN: stats_cells(None, 2)})
    ds.commit("episodes 4 and 5")
    combined = load_stats(ds, {0: 0, 4: 10})
    assert combined is not None
    for name, value in aggregate_stats([first, second])["x"].items():
        assert np.array_equal(combined["x"][name], value), name
    assert load_stats(ds, {0: 0, 4: 10, 5: 15}) is None  # an episode without stats: no partial numbers
    at_tag = ds.tags["one"].open()
    assert load_stats(at_tag, {0: 0}) is not None  # versioned with the rows
    assert stats_from_json(stats_to_json(first))["x"]["q99"].tolist() == first["x"]["q99"].tolist()


def test_stats_of_tables_written_before_the_stats_column(tmp_path: Path) -> None:
    """Tables written before the stats column kept them as column metadata, one key per episode: still read."""
    first = episode_stats({"x": np.arange(10.0)})
    ds = deeplake.create(str(tmp_path / "table"))
    ds.add_column("episode_index", deeplake.types.Int64())
    ds["episode_index"].metadata["episode_stats/0"] = json.dumps(stats_to_json(first))
    ds.append({"episode_index": [0] * 10})
    ds.commit("episode 0, as written before")
    assert load_stats(ds, {0: 0})["x"]["mean"].tolist() == first["x"]["mean"].tolist()
    ds.add_column(STATS_COLUMN, deeplake.types.Text())  # what the next write adds (open_table)
    ds.commit("column added")
    assert load_stats(ds, {0: 0})["x"]["mean"].tolist() == first["x"]["mean"].tolist()


def test_package_imports_without_torch() -> None:
    code = (  # training and the worker buffers it uses are the [torch] extra
        "import importlib, pathlib, lerobot_assets, sys\n"
        "root = pathlib.Path(lerobot_assets.__path__[0])\n"
        "for path in sorted(root.rglob('*.py')):\n"
        "    name = '.'.join(('lerobot_assets', *path.relative_to(root).with_suffix('').parts)).removesuffix('.__init__')\n"
        "    if not name.startswith('lerobot_assets.training') and not name.endswith('__main__'):\n"
        "        importlib.import_module(name)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
