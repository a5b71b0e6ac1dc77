"""Per-episode fingerprints of a dataset's inputs, so that only changed episodes are re-materialized.

An episode's fingerprint covers the dataset's schema (``info.json`` features, fps), its telemetry rows, the compressed packets of its segment in every
camera's video (so re-encoding one episode inside a shared v3.0 MP4 changes only that episode),
and its task text. Files are read once each, however many episodes they hold; videos are demuxed,
not decoded. A file that cannot be read gives its episodes an "unreadable" fingerprint instead of
failing the whole dataset: the episode's own asset then reports the precise error.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import av
import pyarrow as pa
import pyarrow.parquet as pq

from lerobot_assets.lerobot_format import INDEX_COLUMNS, DatasetMeta


def _digest() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=16)


def episode_fingerprints(meta: DatasetMeta) -> dict[int, str]:
    """A fingerprint per episode of ``meta`` (hex string), stable across runs and machines."""
    parts: dict[int, list[bytes]] = defaultdict(list)
    for index, digest in _telemetry_digests(meta).items():
        parts[index].append(b"telemetry:" + digest)
    for camera in meta.cameras:
        for index, digest in _video_digests(meta, camera).items():
            parts[index].append(camera.encode() + b":" + digest)
    schema = repr((meta.version, meta.fps, sorted((f.key, f.dtype, f.shape) for f in meta.features.values())))
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


def _telemetry_digests(meta: DatasetMeta) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    columns = list(INDEX_COLUMNS) + [f.key for f in meta.value_features if f.key not in INDEX_COLUMNS]
    for relative, episodes in _by_file(meta, lambda e: e.data_path).items():
        path = meta.root / relative
        try:
            schema = pq.read_schema(path)
            table = pq.read_table(path, columns=[c for c in columns if c in schema.names])
        except (pa.ArrowException, OSError):
            out.update({index: _unreadable(path) for index in episodes})
            continue
        episode_column = table["episode_index"].to_numpy()
        for index in episodes:
            rows = table.filter(episode_column == index)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, rows.schema) as writer:
                writer.write_table(rows)
            out[index] = hashlib.blake2b(sink.getvalue().to_pybytes(), digest_size=16).digest()
    return out


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
