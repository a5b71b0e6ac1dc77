"""Per-episode staging files: the encoded camera frames handed from decoding to table writing.

Frames travel between the two assets as an Arrow IPC file on disk (one binary column per camera,
one row per frame, the cameras' image statistics in the schema metadata) rather than as pickled
megabytes through an IO manager; reading it back maps the file instead of parsing it. Files are
written under a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

from lerobot_assets.stats import Stats, stats_from_json, stats_to_json

_STATS_KEY = b"image_stats"


def staging_path(folder: Path, episode_index: int) -> Path:
    return folder / f"episode_{episode_index:06d}.arrow"


def write_frames(path: Path, frame_index: list[int], images: Mapping[str, list[bytes]], image_stats: Stats) -> Path:
    """Write ``images`` (camera key -> encoded frames, in ``frame_index`` order) and their stats to ``path``."""
    table = pa.table(
        {"frame_index": pa.array(frame_index, pa.int64()), **{k: pa.array(v, pa.binary()) for k, v in images.items()}}
    ).replace_schema_metadata({_STATS_KEY: json.dumps(stats_to_json(image_stats))})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    tmp.replace(path)
    return path


def read_frames(path: Path) -> tuple[list[int], dict[str, list[bytes]], Stats]:
    """Read a staging file back as ``(frame_index, {camera: encoded frames}, {camera: image stats})``."""
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
        cameras = [name for name in table.column_names if name != "frame_index"]
        frames = {camera: table[camera].to_pylist() for camera in cameras}
        stats = stats_from_json(json.loads(table.schema.metadata[_STATS_KEY]))
        return table["frame_index"].to_pylist(), frames, stats
