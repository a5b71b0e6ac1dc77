"""Reading the LeRobot dataset format (v3.0, and the older v2.1/v2.0) from a local directory.

The reader turns ``meta/`` into plain dataclasses: which cameras exist, what each numeric feature
looks like, and, per episode, where its telemetry rows and video segments live (the rows themselves
are read by :mod:`~lerobot_assets.core.lerobot.telemetry`). Nothing here knows about Dagster or Deeplake; every check raises :class:`DatasetFormatError` naming the dataset,
episode and file at fault.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lerobot_assets.core.errors import DatasetFormatError, where

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
#: Columns every LeRobot frame carries besides its features, with the dtype each is stored (and fingerprinted) as.
INDEX_DTYPES = {
    "timestamp": np.float32,
    "frame_index": np.int64,
    "episode_index": np.int64,
    "index": np.int64,
    "task_index": np.int64,
}
INDEX_COLUMNS = tuple(INDEX_DTYPES)
NUMERIC_DTYPES = ("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "bool")
#: How a Git LFS pointer file starts: what a clone without ``git lfs`` holds instead of the content.
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


@dataclass(frozen=True)
class Feature:
    """One entry of ``info.json["features"]``."""

    key: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def is_camera(self) -> bool:
        return self.dtype == "video"

    @property
    def is_vector(self) -> bool:
        """Stored as a fixed-length vector (e.g. joint state), rather than a scalar per frame."""
        return math.prod(self.shape) != 1 or len(self.shape) > 1


@dataclass(frozen=True)
class VideoSegment:
    """The part of one camera's MP4 file that belongs to one episode."""

    camera: str
    path: str  # relative to the dataset root
    from_timestamp: float
    to_timestamp: float


@dataclass(frozen=True)
class Episode:
    """Where one episode's rows and video segments are, as declared by ``meta/``."""

    index: int
    length: int
    tasks: tuple[str, ...]
    data_path: str  # relative to the dataset root
    videos: Mapping[str, VideoSegment] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetMeta:
    """Everything ``meta/`` says about a dataset, with paths resolved for its layout version."""

    name: str
    root: Path
    version: str
    fps: float
    robot_type: str | None
    features: Mapping[str, Feature]
    tasks: Mapping[int, str]
    episodes: Mapping[int, Episode]
    #: Episodes ``meta/`` lists with 0 frames: nothing to store, so they are skipped (with a warning).
    empty_episodes: tuple[int, ...] = ()

    @property
    def cameras(self) -> list[str]:
        return [k for k, f in self.features.items() if f.is_camera]

    @property
    def value_features(self) -> list[Feature]:
        """Numeric per-frame features other than the index columns (state, action, effort, reward...)."""
        return [
            f
            for f in self.features.values()
            if f.key not in INDEX_COLUMNS and f.dtype in NUMERIC_DTYPES
        ]

    def episode(self, index: int) -> Episode:
        try:
            return self.episodes[index]
        except KeyError:
            known = sorted(self.episodes)
            span = f"{known[0]}..{known[-1]}" if known else "none"
            raise DatasetFormatError(
                f"{where(self.name, index)}: no such episode; the dataset has {len(known)} episodes ({span})"
            ) from None


def read_dataset(root: str | Path, name: str | None = None) -> DatasetMeta:
    """Read ``meta/`` of the LeRobot dataset at ``root``; ``name`` is only used in error messages."""
    root = Path(root)
    name = name or root.name
    info = _read_info(root, name)
    version = info["codebase_version"]
    fps = info["fps"]
    features = {
        key: Feature(key, spec.get("dtype", ""), tuple(int(s) for s in spec.get("shape") or (1,)))
        for key, spec in info["features"].items()
    }
    unsupported = [k for k, f in features.items() if f.dtype == "image"]
    if unsupported:
        raise DatasetFormatError(
            f"{where(name, file='meta/info.json')}: features {unsupported} store images inside the parquet "
            "files (dtype 'image'); only video features (dtype 'video') are supported"
        )
    if version == "v3.0":
        tasks = _read_tasks_v3(root, name)
        episodes = _read_episodes_v3(root, name, info, features)
        index_file = "meta/episodes/"
    else:
        tasks = _read_tasks_v2(root, name)
        episodes = _read_episodes_v2(root, name, info, features)
        index_file = "meta/episodes.jsonl"
    _check_totals(root / index_file, name, info, episodes)
    empty = tuple(sorted(i for i, e in episodes.items() if e.length == 0))
    episodes = {i: e for i, e in episodes.items() if e.length > 0}
    return DatasetMeta(name, root, version, float(fps), info.get("robot_type"), features, tasks, episodes, empty)


def _check_totals(index_file: Path, name: str, info: dict, episodes: Mapping[int, Episode]) -> None:
    """Refuse an episode index that disagrees with ``info.json``'s totals (e.g. a truncated ``episodes.jsonl``)."""
    frames = sum(e.length for e in episodes.values())
    declared = {key: info.get(key) for key in ("total_episodes", "total_frames")}
    found = {"total_episodes": len(episodes), "total_frames": frames}
    wrong = [key for key, value in declared.items() if isinstance(value, int) and value != found[key]]
    if wrong:
        span = f" ({min(episodes)}..{max(episodes)})" if episodes else ""
        raise DatasetFormatError(
            f"{where(name, file=index_file)}: lists {len(episodes)} episodes{span} with {frames} frames, but "
            f"meta/info.json declares {' and '.join(f'{key} {declared[key]}' for key in wrong)}; "
            "the episode index may be truncated or info.json out of date"
        )


def lfs_pointer_error(path: Path, location: str) -> str | None:
    """The message for a Git LFS pointer file at ``path`` (a clone without ``git lfs``), else None."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(LFS_POINTER))
    except OSError:
        return None
    if head != LFS_POINTER:
        return None
    return (
        f"{location}: is a Git LFS pointer file, not the file's content; "
        "run `git lfs pull` in the source repository (or clone it with Git LFS installed)"
    )


def _refuse_lfs_pointer(path: Path, location: str) -> None:
    message = lfs_pointer_error(path, location)
    if message:
        raise DatasetFormatError(message)


def _read_info(root: Path, name: str) -> dict:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise DatasetFormatError(
            f"{where(name, file=path)}: meta/info.json is missing; expected the root of a LeRobot dataset"
        )
    _refuse_lfs_pointer(path, where(name, file=path))
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{where(name, file=path)}: meta/info.json is not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise DatasetFormatError(f"{where(name, file=path)}: expected a JSON object")
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise DatasetFormatError(
            f"{where(name, file=path)}: codebase_version {version!r} is not supported; "
            f"expected one of {', '.join(SUPPORTED_VERSIONS)}"
        )
    fps = info.get("fps")
    if not isinstance(fps, (int, float)) or not fps > 0 or not math.isfinite(fps):
        raise DatasetFormatError(f"{where(name, file=path)}: fps is {fps!r}; expected a positive number")
    if not isinstance(info.get("features"), dict) or not info["features"]:
        raise DatasetFormatError(f"{where(name, file=path)}: 'features' is missing or empty")
    for key in ("data_path",) + (("video_path",) if any(
        isinstance(f, dict) and f.get("dtype") == "video" for f in info["features"].values()
    ) else ()):
        if not isinstance(info.get(key), str):
            raise DatasetFormatError(f"{where(name, file=path)}: {key!r} is missing; expected a path template")
    return info


def read_parquet(path: Path, name: str, episode: int | None = None, **kwargs) -> pa.Table:
    if not path.is_file():
        raise DatasetFormatError(f"{where(name, episode, path)}: file is missing")
    try:
        return pq.read_table(path, **kwargs)
    except (pa.ArrowException, OSError) as exc:
        _refuse_lfs_pointer(path, where(name, episode, path))
        raise DatasetFormatError(
            f"{where(name, episode, path)}: cannot be read as parquet, the file may be truncated ({exc})"
        ) from None


def _read_jsonl(path: Path, name: str) -> list[dict]:
    if not path.is_file():
        raise DatasetFormatError(f"{where(name, file=path)}: file is missing")
    _refuse_lfs_pointer(path, where(name, file=path))
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"{where(name, file=path)}: line {number} is not valid JSON ({exc})") from None
    return rows


def _read_tasks_v3(root: Path, name: str) -> dict[int, str]:
    path = root / "meta" / "tasks.parquet"
    frame = read_parquet(path, name).to_pandas()
    if "task_index" not in frame.columns:
        raise DatasetFormatError(f"{where(name, file=path)}: expected a 'task_index' column")
    texts = frame["task"] if "task" in frame.columns else frame.index.to_series()
    return {int(i): str(t) for i, t in zip(frame["task_index"], texts)}


def _read_tasks_v2(root: Path, name: str) -> dict[int, str]:
    path = root / "meta" / "tasks.jsonl"
    return {int(row["task_index"]): str(row["task"]) for row in _read_jsonl(path, name)}


def _read_episodes_v3(root: Path, name: str, info: dict, features: Mapping[str, Feature]) -> dict[int, Episode]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise DatasetFormatError(
            f"{where(name, file=root / 'meta' / 'episodes')}: no chunk-*/file-*.parquet episode index files"
        )
    cameras = [k for k, f in features.items() if f.is_camera]
    episodes: dict[int, Episode] = {}
    for path in files:
        schema = read_parquet_schema(path, name)
        wanted = [c for c in schema.names if not c.startswith("stats/")]
        frame = read_parquet(path, name, columns=wanted).to_pandas()
        required = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        for cam in cameras:
            required += [f"videos/{cam}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise DatasetFormatError(f"{where(name, file=path)}: missing columns {missing}")
        for row in frame.to_dict("records"):
            index = int(row["episode_index"])
            videos = {
                cam: VideoSegment(
                    cam,
                    info["video_path"].format(
                        video_key=cam,
                        chunk_index=int(row[f"videos/{cam}/chunk_index"]),
                        file_index=int(row[f"videos/{cam}/file_index"]),
                    ),
                    float(row[f"videos/{cam}/from_timestamp"]),
                    float(row[f"videos/{cam}/to_timestamp"]),
                )
                for cam in cameras
            }
            data_path = info["data_path"].format(
                chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
            )
            tasks = tuple(str(t) for t in (row.get("tasks") if row.get("tasks") is not None else ()))
            episodes[index] = Episode(index, int(row["length"]), tasks, data_path, videos)
    return episodes


def read_parquet_schema(path: Path, name: str, episode: int | None = None) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        _refuse_lfs_pointer(path, where(name, episode, path))
        raise DatasetFormatError(
            f"{where(name, episode, path)}: cannot be read as parquet, the file may be truncated ({exc})"
        ) from None


def _read_episodes_v2(root: Path, name: str, info: dict, features: Mapping[str, Feature]) -> dict[int, Episode]:
    chunks_size = int(info.get("chunks_size") or 1000)
    cameras = [k for k, f in features.items() if f.is_camera]
    episodes: dict[int, Episode] = {}
    for row in _read_jsonl(root / "meta" / "episodes.jsonl", name):
        index, length = int(row["episode_index"]), int(row["length"])
        chunk = index // chunks_size
        videos = {
            cam: VideoSegment(
                cam,
                info["video_path"].format(episode_chunk=chunk, video_key=cam, episode_index=index),
                0.0,
                length / info["fps"],
            )
            for cam in cameras
        }
        data_path = info["data_path"].format(episode_chunk=chunk, episode_index=index)
        episodes[index] = Episode(index, length, tuple(str(t) for t in row.get("tasks", ())), data_path, videos)
    return episodes
