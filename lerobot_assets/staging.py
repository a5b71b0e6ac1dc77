"""Per-episode staging files: encoded camera frames kept between two runs.

When ``decoded_camera_frames`` is materialized without ``deeplake_table`` (the two are normally
materialized together, and then frames go from decoder to table in memory), its frames wait in a
staging file for a later ``deeplake_table`` run: an Arrow IPC file (one binary column per camera,
one row per frame; the episode's input fingerprint and the cameras' image statistics in the schema
metadata), read back through a memory map. Files are written under a temporary name and renamed,
so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from lerobot_assets.stats import Stats, stats_from_json, stats_to_json

_STATS_KEY = b"image_stats"
_FINGERPRINT_KEY = b"fingerprint"


@dataclass(frozen=True)
class StagedFrames:
    """One episode's encoded frames (camera key -> frames in ``frame_index`` order) and their stats."""

    fingerprint: str  # of the episode's inputs the frames were decoded from
    frame_index: list[int]
    images: dict[str, list[bytes]]
    stats: Stats


def staging_path(folder: Path, episode_index: int) -> Path:
    return folder / f"episode_{episode_index:06d}.arrow"


def write_frames(path: Path, staged: StagedFrames) -> Path:
    """Write ``staged`` to ``path`` atomically."""
    columns = {"frame_index": pa.array(staged.frame_index, pa.int64())}
    columns |= {camera: pa.array(frames, pa.binary()) for camera, frames in staged.images.items()}
    metadata = {_STATS_KEY: json.dumps(stats_to_json(staged.stats)), _FINGERPRINT_KEY: staged.fingerprint}
    table = pa.table(columns).replace_schema_metadata(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    tmp.replace(path)
    return path


def read_frames(path: Path) -> StagedFrames | None:
    """The staging file at ``path``, or None when there is none."""
    if not path.is_file():
        return None
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    metadata = table.schema.metadata
    cameras = [name for name in table.column_names if name != "frame_index"]
    return StagedFrames(
        fingerprint=metadata[_FINGERPRINT_KEY].decode(),
        frame_index=table["frame_index"].to_pylist(),
        images={camera: table[camera].to_pylist() for camera in cameras},
        stats=stats_from_json(json.loads(metadata[_STATS_KEY])),
    )
