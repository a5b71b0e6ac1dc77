"""Per-episode staging files: the encoded camera frames handed from decoding to table writing.

Frames travel between the two assets as a parquet file on disk (one binary column per camera, one
row per frame) rather than as pickled megabytes through an IO manager. Files are written under a
temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def staging_path(folder: Path, episode_index: int) -> Path:
    return folder / f"episode_{episode_index:06d}.parquet"


def write_frames(path: Path, frame_index: list[int], images: Mapping[str, list[bytes]]) -> Path:
    """Write ``images`` (camera key -> encoded frames, in ``frame_index`` order) to ``path``."""
    table = pa.table(
        {"frame_index": pa.array(frame_index, pa.int64()), **{k: pa.array(v, pa.binary()) for k, v in images.items()}}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="none")
    tmp.replace(path)
    return path


def read_frames(path: Path) -> tuple[list[int], dict[str, list[bytes]]]:
    """Read a staging file back as ``(frame_index, {camera: encoded frames})``."""
    table = pq.read_table(path)
    cameras = [name for name in table.column_names if name != "frame_index"]
    return table["frame_index"].to_pylist(), {camera: table[camera].to_pylist() for camera in cameras}
