"""Per-episode staging files: encoded camera frames kept between two runs.

When ``decoded_camera_frames`` is materialized without ``deeplake_table`` (the two are normally
materialized together, and then frames go from decoder to table in memory), its frames wait in a
staging file for a later ``deeplake_table`` run, which may run on another machine: an object under
the tables root (``<root>/.staging/<name>/episode_<index>.arrow``, see :mod:`lerobot_assets.core.storage`), an Arrow IPC file (one binary column per camera,
one row per frame; the episode's input fingerprint and the cameras' image statistics in the schema
metadata). An object is written whole, so a reader never sees half a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from lerobot_assets.core.lerobot.stats import Stats, stats_from_json, stats_to_json
from lerobot_assets.core.names import check_name
from lerobot_assets.core.storage import read_object, write_object

_STATS_KEY = b"image_stats"
_FINGERPRINT_KEY = b"fingerprint"


@dataclass(frozen=True)
class StagedFrames:
    """One episode's encoded frames (camera key -> frames in ``frame_index`` order) and their stats."""

    fingerprint: str  # of the episode's inputs the frames were decoded from
    frame_index: list[int]
    images: dict[str, list[bytes]]
    stats: Stats


def staging_folder(tables_root: str, name: str) -> str:
    """Where dataset ``name``'s staged frames live: beside its table, for a run on any machine."""
    return f"{tables_root.rstrip('/')}/.staging/{check_name(name)}"


def staging_url(folder: str, episode_index: int) -> str:
    return f"{folder}/episode_{episode_index:06d}.arrow"


def write_frames(url: str, staged: StagedFrames) -> None:
    """Write ``staged`` to ``url``, whole."""
    columns = {"frame_index": pa.array(staged.frame_index, pa.int64())}
    columns |= {camera: pa.array(frames, pa.binary()) for camera, frames in staged.images.items()}
    metadata = {_STATS_KEY: json.dumps(stats_to_json(staged.stats)), _FINGERPRINT_KEY: staged.fingerprint}
    table = pa.table(columns).replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    write_object(url, sink.getvalue().to_pybytes())


def read_frames(url: str) -> StagedFrames | None:
    """The staged frames at ``url``, or None when there are none."""
    data = read_object(url)
    if data is None:
        return None
    table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
    metadata = table.schema.metadata
    cameras = [name for name in table.column_names if name != "frame_index"]
    return StagedFrames(
        fingerprint=metadata[_FINGERPRINT_KEY].decode(),
        frame_index=table["frame_index"].to_pylist(),
        images={camera: table[camera].to_pylist() for camera in cameras},
        stats=stats_from_json(json.loads(metadata[_STATS_KEY])),
    )
