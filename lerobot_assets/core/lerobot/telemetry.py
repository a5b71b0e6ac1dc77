"""One episode's telemetry rows: reading them, checking them against ``meta/``, and their stored values.

Rows are refused, never converted, when they disagree with ``info.json`` (columns, dtypes, vector
lengths), with the episode's length, or with LeRobot's timestamp rule (1/fps apart).
"""

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lerobot_assets.core.errors import DatasetFormatError, where
from lerobot_assets.core.lerobot.meta import (
    INDEX_COLUMNS,
    INDEX_DTYPES,
    DatasetMeta,
    Episode,
    Feature,
    read_parquet,
    read_parquet_schema,
)

#: LeRobot's ``check_timestamps_sync`` tolerance: consecutive timestamps must be 1/fps apart within it.
TIMESTAMP_TOLERANCE_S = 1e-4


def read_episode_telemetry(meta: DatasetMeta, index: int) -> pa.Table:
    """Read one episode's telemetry rows and check them against ``meta/``.

    Returns the index columns and every numeric feature, in frame order. Raises
    :class:`DatasetFormatError` when columns are missing, their dtypes or vector lengths disagree
    with ``info.json``, the row count differs from the episode length, ``frame_index`` has gaps or
    repeats, or timestamps are not 1/fps apart (LeRobot's ``check_timestamps_sync``).
    """
    episode = meta.episode(index)
    path = meta.root / episode.data_path
    if not path.is_file():
        raise DatasetFormatError(f"{where(meta.name, index, path)}: file is missing")
    problem = schema_problem(meta, read_parquet_schema(path, meta.name, index), path, index)
    if problem:
        raise DatasetFormatError(problem)
    table = read_parquet(path, meta.name, index, columns=telemetry_columns(meta), filters=[("episode_index", "=", index)])
    table = table.sort_by("frame_index")
    _check_rows(meta, episode, table, path)
    return table


def telemetry_columns(meta: DatasetMeta) -> list[str]:
    """The parquet columns an episode's rows are read with: index columns, then numeric features."""
    return list(INDEX_COLUMNS) + [f.key for f in meta.value_features if f.key not in INDEX_COLUMNS]


def schema_problem(meta: DatasetMeta, schema: pa.Schema, path: Path, episode: int | None = None) -> str | None:
    """What in a data file's schema disagrees with ``info.json`` (missing columns, dtypes, vector lengths), or None.

    Values of another dtype would be cast silently when stored, and vectors of another length
    would not fit the table's column, so both are refused rather than converted.
    """
    at = where(meta.name, episode, path)
    columns = telemetry_columns(meta)
    missing = [c for c in columns if c not in schema.names]
    if missing:
        return f"{at}: columns {missing} listed in meta/info.json are missing; the file has {schema.names}"
    for feature in meta.value_features:
        if feature.key in INDEX_COLUMNS:
            continue
        kind = schema.field(feature.key).type
        width = math.prod(feature.shape)
        if pa.types.is_fixed_size_list(kind) and kind.list_size != width:
            return (f"{at}: column {feature.key!r} has vectors of length {kind.list_size}; "
                    f"meta/info.json declares shape {list(feature.shape)}")
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            kind = kind.value_type
        elif width != 1:
            return f"{at}: column {feature.key!r} holds scalars; meta/info.json declares shape {list(feature.shape)}"
        try:
            dtype = np.dtype(kind.to_pandas_dtype()).name
        except (NotImplementedError, TypeError):
            dtype = str(kind)
        if dtype != feature.dtype:
            return f"{at}: column {feature.key!r} holds {dtype} values; meta/info.json declares dtype {feature.dtype}"
    return None


def _check_rows(meta: DatasetMeta, episode: Episode, table: pa.Table, path: Path) -> None:
    """Check one episode's rows (sorted by ``frame_index``) against ``meta/``; :class:`DatasetFormatError` if not."""
    at = where(meta.name, episode.index, path)
    if table.num_rows != episode.length:
        raise DatasetFormatError(
            f"{at}: {table.num_rows} rows for the episode; meta/ declares length {episode.length}"
        )
    frame_index = table["frame_index"].to_numpy()
    expected = np.arange(episode.length)
    if not np.array_equal(frame_index, expected):
        bad = int(np.argmax(frame_index != expected))
        raise DatasetFormatError(
            f"{at}: frame_index must run 0..{episode.length - 1} without gaps or repeats; "
            f"row {bad} has {int(frame_index[bad])}, expected {bad}"
        )
    timestamps = table["timestamp"].to_numpy()
    steps = np.diff(timestamps)
    if len(steps) and not (steps > 0).all():
        bad = int(np.argmax(~(steps > 0))) + 1
        raise DatasetFormatError(
            f"{at}: timestamps must increase; frame {bad} has {timestamps[bad]:.6f} after {timestamps[bad - 1]:.6f}"
        )
    off = _off_fps_steps(timestamps, meta.fps)
    if len(off):
        bad = int(off[0]) + 1
        raise DatasetFormatError(
            f"{at}: frame {bad} comes {float(timestamps[bad]) - float(timestamps[bad - 1]):.6f} s after frame "
            f"{bad - 1}; at {meta.fps:g} fps (meta/info.json) frames are {1 / meta.fps:.6f} s apart, within "
            f"{TIMESTAMP_TOLERANCE_S:g} s ({len(off)} steps of {len(steps)} are not)"
        )
    for feature in meta.value_features:
        if feature.key in INDEX_COLUMNS:
            continue
        column = table[feature.key]
        width = math.prod(feature.shape)
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            if len(lengths) and not (lengths == width).all():
                bad = int(np.argmax(lengths != width))
                raise DatasetFormatError(
                    f"{at}: column {feature.key!r} has vectors of length {int(lengths[bad])} at frame {bad}; "
                    f"meta/info.json declares shape {list(feature.shape)}"
                )


def _off_fps_steps(timestamps: np.ndarray, fps: float) -> np.ndarray:
    """Positions of the steps between consecutive ``timestamps`` that are not 1/fps, as LeRobot's
    ``check_timestamps_sync`` (tolerance 1e-4 s), widened by the rounding of the timestamps' own
    dtype (float32 timestamps late in a long episode are only that precise)."""
    if len(timestamps) < 2:
        return np.empty(0, dtype=np.int64)
    steps = np.diff(timestamps.astype(np.float64))
    return np.flatnonzero(np.abs(steps - 1 / fps) > fps_tolerance(timestamps))


def fps_tolerance(timestamps: np.ndarray) -> float:
    """LeRobot's 1e-4 s, plus twice the rounding step of ``timestamps``' dtype at their largest value."""
    return TIMESTAMP_TOLERANCE_S + 2 * float(np.spacing(np.abs(timestamps).max()))


def feature_array(table: pa.Table, feature: Feature) -> np.ndarray:
    """A feature column as a dense numpy array of shape ``(rows, *feature.shape)`` (scalars: ``(rows,)``)."""
    column = table[feature.key].combine_chunks()
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape((len(column), *feature.shape))
    return column.to_numpy(zero_copy_only=False)


def episode_values(meta: DatasetMeta, telemetry: pa.Table) -> dict[str, Any]:
    """One episode's stored values, by column: numeric features and index columns as numpy arrays
    of their declared dtype and shape, and the task text of every row.

    These are what the table holds for the episode, and what its fingerprint hashes: equal values
    give equal columns however the parquet file encodes them.
    """
    values: dict[str, Any] = {
        feature.key: feature_array(telemetry, feature).astype(np.dtype(feature.dtype), copy=False)
        for feature in meta.value_features
    }
    for key, dtype in INDEX_DTYPES.items():
        values[key] = telemetry[key].to_numpy().astype(dtype, copy=False)
    values["task"] = episode_task(meta, telemetry)
    return values


def episode_task(meta: DatasetMeta, table: pa.Table) -> list[str]:
    """The task text of every row, looked up from ``task_index``."""
    out = []
    for task_index in table["task_index"].to_pylist():
        try:
            out.append(meta.tasks[task_index])
        except KeyError:
            raise DatasetFormatError(
                f"{where(meta.name, int(table['episode_index'][0].as_py()))}: task_index {task_index} "
                f"is not in the task list (known: {sorted(meta.tasks)})"
            ) from None
    return out

