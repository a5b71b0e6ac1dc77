"""Small but real LeRobot datasets, written to disk for the demo, the tests and the benchmarks.

Real datasets are large, slow to download and cannot be checked frame by frame. The generator
writes the same files the official ``lerobot`` library writes (layout, column names, dtypes,
``meta/`` content, AV1 or H.264 MP4 streams), with content that can be predicted exactly:

- every camera frame is a colour gradient shifted by the frame index, with a white
  ``BLOCK_SIZE`` x ``BLOCK_SIZE`` block at ``x = block_x(frame_index, width)``, so a frame
  decoded at the wrong timestamp is caught by looking where the block is (:func:`render_frame`);
- ``observation.state`` is ``base + sin(t + 0.3 j)``, ``action`` is ``state + 0.01 frame_index``
  and ``observation.effort`` is ``cos(state)`` (:func:`episode_telemetry`).

Two layouts are supported. ``v3.0`` concatenates ``episodes_per_file`` episodes in one data
parquet and one MP4 per camera, located by ``meta/episodes/`` (the layout of
``../shared/fixtures/lerobot_v30_small``). ``v2.1`` writes one parquet and one MP4 per camera
for every episode, described by ``meta/*.jsonl``. In both, ``files_per_chunk`` files fill a
``chunk-XXX`` directory before the next one starts, so small datasets can span several chunks.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import groupby
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

VERSIONS = ("v2.1", "v3.0")
#: Side of the white block drawn on every frame, in pixels.
BLOCK_SIZE = 30


@dataclass(frozen=True)
class _Codec:
    name: str  # as written in info.json
    options: dict[str, str]


#: Encoder settings tuned for speed, at a quality that keeps the block edges within a pixel or two.
CODECS = {
    "libsvtav1": _Codec("av1", {"preset": "12", "crf": "30"}),
    "libx264": _Codec("h264", {"preset": "ultrafast", "crf": "18"}),
}

_PATHS = {  # (data_path, video_path) templates of info.json
    "v3.0": (
        "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
    ),
    "v2.1": (
        "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
    ),
}
_INDEX_FEATURES = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}
_QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
#: v2.1 stats carry no quantiles; lerobot added them with v3.0.
_V21_STATS = ("min", "max", "mean", "std", "count")
#: lerobot rotates v3.0 files by size; these are its defaults, which info.json records.
_V30_FILE_SIZES_MB = {"data_files_size_in_mb": 100, "video_files_size_in_mb": 200}

Stats = dict[str, dict[str, np.ndarray]]  # feature -> statistic -> value


def block_x(frame_index: int, width: int) -> int:
    """Left edge of the white block in frame ``frame_index`` (frame index within its episode)."""
    return (frame_index * 7) % (width - 40)


def block_y(height: int) -> int:
    """Top edge of the white block; it does not move vertically."""
    return height // 4


@functools.lru_cache(maxsize=16)
def _gradient(camera_index: int, height: int, width: int) -> np.ndarray:
    """The frame-0 background of a camera; later frames add a per-channel shift to it."""
    y, x = np.mgrid[0:height, 0:width]
    if camera_index % 2:
        x = x[:, ::-1]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (x * 256 // width + 64 * camera_index) % 256
    image[..., 1] = y * 256 // height
    # Blue stays below 128 so that only the block is bright in every channel.
    image[..., 2] = ((x + y) * 128 // (width + height) + 32 * camera_index) % 128
    image.flags.writeable = False
    return image


def render_frame(frame_index: int, camera_index: int, height: int, width: int) -> np.ndarray:
    """The RGB image (uint8, HWC) camera ``camera_index`` shows at ``frame_index`` of any episode."""
    # One (R, G, B) shift, tiled along a row: adding it to rows of the flattened gradient is much
    # faster than broadcasting over the channel axis. uint8 arithmetic wraps around.
    shift = np.tile(np.array([3 * frame_index % 256, 2 * frame_index % 256, 0], np.uint8), width)
    image = (_gradient(camera_index, height, width).reshape(height, -1) + shift).reshape(height, width, 3)
    top, left = block_y(height), block_x(frame_index, width)
    image[top : top + BLOCK_SIZE, left : left + BLOCK_SIZE] = 255
    return image


def episode_telemetry(
    episode_index: int, length: int, *, fps: int, state_dim: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """State, action and effort (float32, ``(length, state_dim)``) of one episode.

    Each episode gets its own per-joint ``base``, drawn from ``seed`` and the episode index only,
    so an episode's values do not depend on how many episodes the dataset has.
    """
    base = np.random.default_rng([seed, episode_index]).uniform(-1.5, 1.5, state_dim)
    frame_index = np.arange(length)[:, None]
    state = base + np.sin(frame_index / fps + 0.3 * np.arange(state_dim))
    return {
        "observation.state": state.astype(np.float32),
        "action": (state + 0.01 * frame_index).astype(np.float32),
        "observation.effort": np.cos(state).astype(np.float32),
    }


def table_rows(
    episode_index: int,
    length: int,
    *,
    camera: str,
    image: bytes,
    fps: int,
    state_dim: int,
    task_index: int = 0,
    task: str = "Pick up the shrimp",
) -> dict[str, Any]:
    """One generated episode's table rows, every frame the same encoded ``image``: what the benchmarks
    write straight into a table when they measure the table, not the decoder."""
    frame_index = np.arange(length, dtype=np.int64)
    return {
        **episode_telemetry(episode_index, length, fps=fps, state_dim=state_dim),
        camera: [image] * length,
        "timestamp": (frame_index / fps).astype(np.float32),
        "frame_index": frame_index,
        "episode_index": np.full(length, episode_index, dtype=np.int64),
        "index": episode_index * length + frame_index,
        "task_index": np.full(length, task_index, dtype=np.int64),
        "task": [task] * length,
    }


@dataclass(frozen=True)
class _Spec:
    """The options of :func:`generate_dataset`, checked before anything is written."""

    version: str
    episode_lengths: tuple[int, ...]
    cameras: tuple[str, ...]
    height: int
    width: int
    fps: int
    codec: str
    effort: bool
    state_dim: int
    tasks: tuple[str, ...]
    episodes_per_file: int
    files_per_chunk: int
    robot_type: str
    seed: int
    gop: int

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"version {self.version!r} is not one of {VERSIONS}")
        if self.codec not in CODECS:
            raise ValueError(f"codec {self.codec!r} is not one of {tuple(CODECS)}")
        if not self.episode_lengths or min(self.episode_lengths) < 1:
            raise ValueError(f"episode_lengths {list(self.episode_lengths)} must be non-empty and positive")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras {list(self.cameras)} has duplicates")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks {list(self.tasks)} must be non-empty and without duplicates")
        if self.height % 2 or self.width % 2 or self.height < 40 or self.width < 42:
            raise ValueError(
                f"{self.height}x{self.width}: yuv420p needs even sizes and the moving block at least 40x42"
            )
        if min(self.fps, self.state_dim, self.episodes_per_file, self.files_per_chunk) < 1:
            raise ValueError("fps, state_dim, episodes_per_file and files_per_chunk must be positive")

    @property
    def camera_keys(self) -> list[str]:
        return [f"observation.images.{camera}" for camera in self.cameras]


@dataclass(frozen=True)
class _Episode:
    """Where one episode goes: its rows, its file and its place inside that file."""

    index: int
    length: int
    task_index: int
    start: int  # global ``index`` of its first frame
    chunk: int
    file: int
    offset: int  # frames of the earlier episodes sharing its file

    def path(self, template: str, video_key: str = "") -> str:
        return template.format(
            chunk_index=self.chunk,
            file_index=self.file,
            episode_chunk=self.chunk,
            episode_index=self.index,
            video_key=video_key,
        )


def generate_dataset(
    root: str | Path,
    *,
    version: str = "v3.0",
    episode_lengths: Sequence[int] = (37, 33, 31),
    cameras: Sequence[str] = ("cam_high", "cam_left_wrist"),
    height: int = 96,
    width: int = 128,
    fps: int = 30,
    codec: str = "libsvtav1",
    effort: bool = True,
    state_dim: int = 6,
    tasks: Sequence[str] = ("Pick up the shrimp", "Wipe the table", "Open the drawer"),
    episodes_per_file: int = 2,
    files_per_chunk: int = 2,
    robot_type: str = "synthetic",
    seed: int = 0,
    gop: int | None = None,
) -> Path:
    """Write a LeRobot dataset to ``root`` (absent or empty) and return its path.

    Episode ``e`` has ``episode_lengths[e]`` frames and task ``tasks[e % len(tasks)]``.
    ``episodes_per_file`` only applies to v3.0 (v2.1 has one file per episode);
    ``files_per_chunk`` is ``chunks_size`` in both layouts. ``codec`` is ``libsvtav1`` (what
    lerobot writes) or ``libx264``. ``gop`` is the most frames between keyframes (default: one
    second's; lerobot itself writes 2, which makes its random access cheap).
    """
    spec = _Spec(version, tuple(episode_lengths), tuple(cameras), height, width, fps, codec, effort, state_dim,
                 tuple(tasks), episodes_per_file, files_per_chunk, robot_type, seed, gop or fps)
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; files of an earlier dataset would mix with the new one")
    episodes = _plan(spec)
    features = _features(spec)
    schema = _data_schema(features, version)
    columns, histograms = _write_files(root, spec, episodes, schema)
    _write_meta(root, spec, episodes, features, schema.names, columns, histograms)
    return root


def _write_files(
    root: Path, spec: _Spec, episodes: list[_Episode], schema: pa.Schema
) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, dict[str, np.ndarray]]]:
    """Write the data parquets and camera MP4s; return each episode's columns and per-camera pixel histograms."""
    data_template, video_template = _PATHS[spec.version]
    columns: dict[int, dict[str, np.ndarray]] = {}
    histograms: dict[int, dict[str, np.ndarray]] = {ep.index: {} for ep in episodes}
    for group in _by_file(episodes):
        for ep in group:
            columns[ep.index] = _episode_columns(spec, ep, schema.names)
        _write_data(root / group[0].path(data_template), schema, [columns[ep.index] for ep in group])
        for camera_index, key in enumerate(spec.camera_keys):
            video = root / group[0].path(video_template, key)
            for ep, histogram in zip(group, _encode_video(spec, video, group, camera_index)):
                histograms[ep.index][key] = histogram
    return columns, histograms


def _write_meta(
    root: Path,
    spec: _Spec,
    episodes: list[_Episode],
    features: dict[str, dict],
    names: list[str],
    columns: dict[int, dict[str, np.ndarray]],
    histograms: dict[int, dict[str, np.ndarray]],
) -> None:
    """Write ``meta/``: the episodes and tasks of the layout, per-episode and dataset statistics, ``info.json``."""
    episode_stats = {ep.index: _stats(features, columns[ep.index], histograms[ep.index], ep.length) for ep in episodes}
    dataset_stats = _stats(
        features,
        {name: np.concatenate([c[name] for c in columns.values()]) for name in names},
        {key: sum(h[key] for h in histograms.values()) for key in spec.camera_keys},
        sum(spec.episode_lengths),
    )
    if spec.version == "v2.1":
        episode_stats = {index: _without_quantiles(stats) for index, stats in episode_stats.items()}
        dataset_stats = _without_quantiles(dataset_stats)
        _write_meta_v21(root, spec, episodes, episode_stats)
    else:
        _write_meta_v30(root, spec, episodes, episode_stats)
    _write_json(root / "meta" / "stats.json", _serialize(dataset_stats))
    _write_json(root / "meta" / "info.json", _info(spec, episodes, features))


def _plan(spec: _Spec) -> list[_Episode]:
    per_file = spec.episodes_per_file if spec.version == "v3.0" else 1
    episodes, start, offset = [], 0, 0
    for index, length in enumerate(spec.episode_lengths):
        file_number, position = divmod(index, per_file)
        offset = offset if position else 0
        chunk, file = divmod(file_number, spec.files_per_chunk)
        episodes.append(_Episode(index, length, index % len(spec.tasks), start, chunk, file, offset))
        start += length
        offset += length
    return episodes


def _by_file(episodes: list[_Episode]) -> list[list[_Episode]]:
    """The episodes grouped by the (chunk, file) they share."""
    return [list(group) for _, group in groupby(episodes, key=lambda ep: (ep.chunk, ep.file))]


def _features(spec: _Spec) -> dict[str, dict]:
    """``info.json["features"]``, in the order lerobot writes them."""
    vectors = ["observation.state", "action"] + (["observation.effort"] if spec.effort else [])
    features = {
        key: {"dtype": "float32", "shape": [spec.state_dim], "names": [f"j{j}" for j in range(spec.state_dim)]}
        for key in vectors
    }
    for key in spec.camera_keys:
        features[key] = {
            "dtype": "video",
            "shape": [spec.height, spec.width, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": spec.height,
                "video.width": spec.width,
                "video.codec": CODECS[spec.codec].name,
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": spec.fps,
                "video.channels": 3,
                "has_audio": False,
            },
        }
    for name, dtype in _INDEX_FEATURES.items():
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    return features


def _data_schema(features: dict[str, dict], version: str) -> pa.Schema:
    """Parquet schema of the frame rows, with the Hugging Face ``datasets`` metadata lerobot writes.

    ``datasets`` 4 (used for v3.0) calls fixed-length vectors ``List``; the earlier versions
    that wrote v2.1 datasets call them ``Sequence``.
    """
    fields, hf_features = [], {}
    for key, feature in features.items():
        if feature["dtype"] == "video":
            continue
        value_type = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
        value = {"dtype": feature["dtype"], "_type": "Value"}
        if feature["shape"] == [1]:
            fields.append(pa.field(key, value_type))
            hf_features[key] = value
        else:
            length = feature["shape"][0]
            fields.append(pa.field(key, pa.list_(value_type, length)))
            list_type = "List" if version == "v3.0" else "Sequence"
            hf_features[key] = {"feature": value, "length": length, "_type": list_type}
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": hf_features}})})


def _episode_columns(spec: _Spec, ep: _Episode, names: list[str]) -> dict[str, np.ndarray]:
    frame_index = np.arange(ep.length, dtype=np.int64)
    columns = episode_telemetry(ep.index, ep.length, fps=spec.fps, state_dim=spec.state_dim, seed=spec.seed) | {
        "timestamp": (frame_index / spec.fps).astype(np.float32),
        "frame_index": frame_index,
        "episode_index": np.full(ep.length, ep.index, np.int64),
        "index": ep.start + frame_index,
        "task_index": np.full(ep.length, ep.task_index, np.int64),
    }
    return {name: columns[name] for name in names}


def _write_data(path: Path, schema: pa.Schema, episodes: list[dict[str, np.ndarray]]) -> None:
    """One row group per episode, as lerobot appends episode after episode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema) as writer:
        for columns in episodes:
            arrays = [
                pa.FixedSizeListArray.from_arrays(columns[field.name].ravel(), field.type.list_size)
                if pa.types.is_fixed_size_list(field.type)
                else pa.array(columns[field.name], field.type)
                for field in schema
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))


def _encode_video(spec: _Spec, path: Path, episodes: list[_Episode], camera_index: int) -> list[np.ndarray]:
    """Encode the episodes one after the other into one MP4 and return each one's pixel histogram.

    Frame ``k`` of the file has pts ``k / fps`` exactly; every episode starts on a keyframe (as
    in lerobot's concatenated files) and keyframes come at least once a second, so seeking
    stays cheap. The histograms (``(3, 256)`` counts per channel) feed the image statistics.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    time_base = Fraction(1, spec.fps)
    channel_offsets = np.array([0, 256, 512], np.uint16)
    histograms = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream(spec.codec, rate=spec.fps)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        stream.codec_context.time_base = time_base
        stream.codec_context.gop_size = spec.gop
        stream.options = dict(CODECS[spec.codec].options)
        for ep in episodes:
            histogram = np.zeros(3 * 256, np.int64)
            for frame_index in range(ep.length):
                image = render_frame(frame_index, camera_index, spec.height, spec.width)
                histogram += np.bincount((_stats_sample(image) + channel_offsets).ravel(), minlength=3 * 256)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts, frame.time_base = ep.offset + frame_index, time_base
                if frame_index == 0:
                    frame.pict_type = av.video.frame.PictureType.I
                container.mux(stream.encode(frame))
            histograms.append(histogram.reshape(3, 256))
        container.mux(stream.encode())
    return histograms


def _stats_sample(image: np.ndarray) -> np.ndarray:
    """The pixels image statistics use: like lerobot, frames of 300 px or more are thinned to ~150 px."""
    longest = max(image.shape[:2])
    step = 1 if longest < 300 else longest // 150
    return image[::step, ::step]


def _stats(features: dict[str, dict], columns: dict[str, np.ndarray], histograms: dict[str, np.ndarray],
           frames: int) -> Stats:
    """Statistics of every feature, in feature order, as lerobot stores them for normalisation."""
    return {
        key: _image_stats(histograms[key], frames) if feature["dtype"] == "video" else _value_stats(columns[key])
        for key, feature in features.items()
    }


def _value_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension stats; min/max keep integer dtypes, the rest is float64 (as in lerobot)."""
    values = values.reshape(len(values), -1)
    if values.dtype.kind == "f":
        values = values.astype(np.float64)
    stats = {
        "min": values.min(axis=0),
        "max": values.max(axis=0),
        "mean": values.mean(axis=0, dtype=np.float64),
        "std": values.std(axis=0, dtype=np.float64),
        "count": np.array([len(values)]),
    }
    return stats | dict(zip(_QUANTILES, np.quantile(values, list(_QUANTILES.values()), axis=0)))


def _image_stats(histogram: np.ndarray, frames: int) -> dict[str, np.ndarray]:
    """Per-channel stats of the pixels scaled to [0, 1], each shaped ``(3, 1, 1)`` like lerobot's.

    Counting the 256 levels of each channel keeps this cheap, and episode histograms add up to
    the dataset's. ``count`` is the number of frames.
    """
    levels = np.arange(256) / 255.0
    pixels = histogram.sum(axis=1)
    mean = histogram @ levels / pixels
    variance = (histogram * (levels - mean[:, None]) ** 2).sum(axis=1) / pixels
    cdf = np.cumsum(histogram, axis=1) / pixels[:, None]
    seen = histogram > 0
    stats = {
        "min": levels[np.argmax(seen, axis=1)],
        "max": levels[255 - np.argmax(seen[:, ::-1], axis=1)],
        "mean": mean,
        "std": np.sqrt(variance),
        "count": np.array([frames]),
    }
    stats |= {name: levels[(cdf < q).sum(axis=1)] for name, q in _QUANTILES.items()}
    return {name: value if name == "count" else value.reshape(3, 1, 1) for name, value in stats.items()}


def _without_quantiles(stats: Stats) -> Stats:
    return {key: {name: feature[name] for name in _V21_STATS} for key, feature in stats.items()}


def _serialize(stats: Stats) -> dict[str, dict[str, list]]:
    return {key: {name: value.tolist() for name, value in feature.items()} for key, feature in stats.items()}


def _used_tasks(spec: _Spec, episodes: list[_Episode]) -> list[str]:
    """lerobot only records the tasks some episode uses."""
    return list(spec.tasks[: max(ep.task_index for ep in episodes) + 1])


def _write_meta_v30(root: Path, spec: _Spec, episodes: list[_Episode], stats: dict[int, Stats]) -> None:
    """``meta/tasks.parquet`` and ``meta/episodes/``, whose files follow the data files."""
    used = _used_tasks(spec, episodes)
    tasks = pa.Table.from_pandas(pd.DataFrame({"task_index": np.arange(len(used), dtype=np.int64)}, index=used))
    # The task text is the pandas index; pandas 3 (as lerobot 0.4) stores it as large_string, pandas 2 as string.
    index = tasks.schema.get_field_index("__index_level_0__")
    (root / "meta").mkdir(parents=True, exist_ok=True)
    pq.write_table(tasks.cast(tasks.schema.set(index, pa.field("__index_level_0__", pa.large_string()))),
                   root / "meta" / "tasks.parquet")
    for group in _by_file(episodes):
        rows = []
        for ep in group:
            row = {
                "episode_index": ep.index,
                "tasks": [spec.tasks[ep.task_index]],
                "length": ep.length,
                "data/chunk_index": ep.chunk,
                "data/file_index": ep.file,
                "dataset_from_index": ep.start,
                "dataset_to_index": ep.start + ep.length,
            }
            for key in spec.camera_keys:
                row |= {
                    f"videos/{key}/chunk_index": ep.chunk,
                    f"videos/{key}/file_index": ep.file,
                    f"videos/{key}/from_timestamp": ep.offset / spec.fps,
                    f"videos/{key}/to_timestamp": (ep.offset + ep.length) / spec.fps,
                }
            for key, feature in _serialize(stats[ep.index]).items():
                row |= {f"stats/{key}/{name}": value for name, value in feature.items()}
            row |= {"meta/episodes/chunk_index": ep.chunk, "meta/episodes/file_index": ep.file}
            rows.append(row)
        path = root / "meta" / "episodes" / f"chunk-{group[0].chunk:03d}" / f"file-{group[0].file:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)


def _write_meta_v21(root: Path, spec: _Spec, episodes: list[_Episode], stats: dict[int, Stats]) -> None:
    """``meta/tasks.jsonl``, ``meta/episodes.jsonl`` and ``meta/episodes_stats.jsonl``."""
    tasks = [{"task_index": i, "task": task} for i, task in enumerate(_used_tasks(spec, episodes))]
    _write_jsonl(root / "meta" / "tasks.jsonl", tasks)
    _write_jsonl(
        root / "meta" / "episodes.jsonl",
        [{"episode_index": ep.index, "tasks": [spec.tasks[ep.task_index]], "length": ep.length} for ep in episodes],
    )
    _write_jsonl(
        root / "meta" / "episodes_stats.jsonl",
        [{"episode_index": ep.index, "stats": _serialize(stats[ep.index])} for ep in episodes],
    )


def _info(spec: _Spec, episodes: list[_Episode], features: dict[str, dict]) -> dict:
    """``meta/info.json``, with the keys (and key order) of each version."""
    if spec.version == "v3.0":
        layout = {"chunks_size": spec.files_per_chunk, **_V30_FILE_SIZES_MB}
    else:
        layout = {
            "total_videos": len(episodes) * len(spec.cameras),
            "total_chunks": episodes[-1].chunk + 1,
            "chunks_size": spec.files_per_chunk,
        }
    data_path, video_path = _PATHS[spec.version]
    return {
        "codebase_version": spec.version,
        "robot_type": spec.robot_type,
        "total_episodes": len(episodes),
        "total_frames": sum(ep.length for ep in episodes),
        "total_tasks": len(_used_tasks(spec, episodes)),
        **layout,
        "fps": spec.fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": data_path,
        "video_path": video_path if spec.cameras else None,
        "features": features,
    }


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

