"""Per-episode fingerprints of a dataset's inputs, so that only changed episodes are re-materialized.

An episode's fingerprint covers what gives its rows their meaning (``info.json`` features and fps),
its values as the table stores them (each column as a numpy array of its declared dtype and shape,
the task text of every row looked up in ``meta/tasks``), and the compressed packets of its segment
in every camera's video (so re-encoding one episode inside a shared v3.0 MP4 changes only that
episode). Values rather than their parquet encoding: a file rewritten with other column types
(``list`` for ``fixed_size_list``), row groups or compression, but equal values, changes no
fingerprint. Files are read once each, however many episodes they hold; videos are demuxed, not
decoded.

Reading every row once is also where the checks that need the whole dataset run: every data
file's schema against ``info.json`` and the declared fps against the timestamps (a wrong fps, or a
wrong dtype, would give every episode wrong data, so the dataset is refused before any episode
runs). A file that cannot be read, or an episode whose rows are invalid, gets an "unreadable"
fingerprint instead: the episode's own run then reports the precise error, and the others land.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lerobot_assets.core.errors import DatasetFormatError, bounded, where
from lerobot_assets.core.lerobot.meta import DatasetMeta
from lerobot_assets.core.lerobot.telemetry import (
    TIMESTAMP_TOLERANCE_S,
    episode_values,
    fps_tolerance,
    schema_problem,
    telemetry_columns,
)


def _digest() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=16)


def episode_fingerprints(meta: DatasetMeta, details: Path | None = None) -> dict[int, str]:
    """A fingerprint per episode of ``meta`` (hex string), stable across runs and machines.

    Raises :class:`DatasetFormatError` when data files' columns disagree with ``info.json``, or
    most episodes' timestamps with its fps; when one line cannot show every problem, all of them
    are written to ``details`` (JSON), which the message names.
    """
    scan = _scan_telemetry(meta)
    if scan.schema_problems:
        files = len({e.data_path for e in meta.episodes.values()})
        head = f"data files disagree with meta/info.json ({len(scan.schema_problems)} of {files})"
        raise DatasetFormatError(bounded(head, scan.schema_problems, details))
    # Most episodes at another rate than info.json says: its fps is wrong. (A single episode's
    # jump is refused by that episode's own run; the others still land.)
    if scan.off_fps and 2 * len(scan.off_fps) > scan.timed:
        head = (
            f"{where(meta.name, file=meta.root / 'meta' / 'info.json')}: fps {meta.fps:g} (frames "
            f"{1 / meta.fps:.6f} s apart, within {TIMESTAMP_TOLERANCE_S:g} s as LeRobot checks) disagrees with "
            f"the timestamps of {len(scan.off_fps)} of {scan.timed} episodes"
        )
        raise DatasetFormatError(bounded(head, scan.off_fps, details))
    parts: dict[int, list[bytes]] = defaultdict(list)
    for index, digest in scan.digests.items():
        parts[index].append(b"telemetry:" + digest)
    for camera in meta.cameras:
        for index, digest in _video_digests(meta, camera).items():
            parts[index].append(camera.encode() + b":" + digest)
    schema = repr((meta.fps, sorted((f.key, f.dtype, f.shape) for f in meta.features.values())))
    result = {}
    for index, episode in sorted(meta.episodes.items()):
        digest = _digest()
        digest.update(f"schema={schema};length={episode.length};tasks={episode.tasks!r}".encode())
        for part in parts[index]:
            digest.update(part)
        result[index] = digest.hexdigest()
    return result


def _by_file(meta: DatasetMeta, path_of) -> dict[str, list[int]]:
    files: dict[str, list[int]] = defaultdict(list)
    for index, episode in meta.episodes.items():
        path = path_of(episode)
        if path is not None:
            files[path].append(index)
    return files


def _unreadable(path: Path) -> bytes:
    size = path.stat().st_size if path.exists() else -1
    return f"unreadable:{size}".encode()


def values_digest(values: dict) -> bytes:
    """Hash of an episode's :func:`~lerobot_assets.core.lerobot.telemetry.episode_values`: per column its
    name, dtype, shape and C-ordered bytes (text as JSON)."""
    digest = _digest()
    for key in sorted(values):
        value = values[key]
        if isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value)
            digest.update(f"{key}:{array.dtype.str}:{array.shape}:".encode())
            digest.update(array.tobytes())
        else:
            digest.update(f"{key}:text:".encode() + json.dumps(value).encode())
    return digest.digest()


@dataclass
class _Scan:
    """What reading every episode's rows once found."""

    digests: dict[int, bytes] = field(default_factory=dict)  # episode -> digest of its values
    schema_problems: dict[int, str] = field(default_factory=dict)  # first episode of a file -> problem
    off_fps: dict[int, str] = field(default_factory=dict)  # episode -> its frame spacing, not 1/fps
    timed: int = 0  # episodes with at least two frames


def _scan_telemetry(meta: DatasetMeta) -> _Scan:
    scan = _Scan()
    for relative, episodes in _by_file(meta, lambda e: e.data_path).items():
        path = meta.root / relative
        try:
            problem = schema_problem(meta, pq.read_schema(path), path, min(episodes))
            table = None if problem else pq.read_table(path, columns=telemetry_columns(meta))
        except (pa.ArrowException, OSError):
            scan.digests.update({index: _unreadable(path) for index in episodes})
            continue
        if problem:
            scan.schema_problems[min(episodes)] = problem
            continue
        episode_column = table["episode_index"].to_numpy()
        for index in episodes:
            rows = table.filter(episode_column == index).sort_by("frame_index")
            try:
                values = episode_values(meta, rows)
            except (DatasetFormatError, ValueError, pa.ArrowException) as exc:
                scan.digests[index] = f"invalid:{exc}".encode()  # the episode's own run reports it
                continue
            scan.digests[index] = values_digest(values)
            timestamps = values["timestamp"]
            if len(timestamps) > 1:
                scan.timed += 1
                step = float(np.median(np.diff(timestamps.astype(np.float64))))
                if abs(step - 1 / meta.fps) > fps_tolerance(timestamps):
                    scan.off_fps[index] = f"{where(episode=index, file=path)}: frames {step:.6f} s apart ({1 / step:.4g} fps)"
    return scan


def _video_digests(meta: DatasetMeta, camera: str) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    files = _by_file(meta, lambda e: e.videos[camera].path if camera in e.videos else None)
    for relative, episodes in files.items():
        path = meta.root / relative
        segments = sorted(
            ((meta.episodes[i].videos[camera].from_timestamp, meta.episodes[i].videos[camera].to_timestamp, i)
             for i in episodes),
        )
        digests = {i: _digest() for i in episodes}
        for i in episodes:
            start, end = meta.episodes[i].videos[camera].from_timestamp, meta.episodes[i].videos[camera].to_timestamp
            digests[i].update(f"{relative}:{start:.6f}:{end:.6f}".encode())
        half_frame = 0.5 / meta.fps
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                time_base = float(stream.time_base)
                for packet in container.demux(stream):
                    if packet.pts is None:
                        continue
                    t = packet.pts * time_base
                    for start, end, i in segments:
                        if start - half_frame <= t < end - half_frame:
                            digests[i].update(bytes(packet))
                            break
        except (av.FFmpegError, OSError, IndexError):
            out.update({i: _unreadable(path) for i in episodes})
            continue
        out.update({i: d.digest() for i, d in digests.items()})
    return out
