"""The Dagster asset graph: thin wiring around the plain functions of the other modules.

    hf_snapshot -> episode_metadata -> telemetry_frame -> decoded_camera_frames -> deeplake_table -> training_snapshot

``hf_snapshot``, ``episode_metadata`` and ``training_snapshot`` are partitioned by dataset; the
three per-episode assets by (dataset, episode). The episode dimension is shared by every dataset,
so a pair that does not exist in a dataset fails fast with a message saying so.
"""

import time
import warnings
from typing import Any, Optional

import numpy as np
import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetIn,
    BetaWarning,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    Output,
    asset,
)

from lerobot_assets.fingerprint import episode_fingerprints
from lerobot_assets.lerobot_format import DatasetMeta, feature_array, read_dataset, read_episode_telemetry
from lerobot_assets.partitions import dataset_partitions, episode_dimension, episode_key, episode_partitions
from lerobot_assets.preview import plot_series, png_markdown, thumbnails_markdown
from lerobot_assets.resources import HubResource, ImageEncodingResource, StorageResource
from lerobot_assets.source import pin
from lerobot_assets.staging import read_frames, staging_path, write_frames
from lerobot_assets.stats import episode_stats, store_episode_stats
from lerobot_assets.table import (
    build_indexes,
    create_tag,
    episode_frames,
    episode_rows,
    open_table,
    open_writable,
    replace_episode,
    set_table_metadata,
    summarize,
    write_lock,
)
from lerobot_assets.versions import CODE_VERSION, episode_data_version
from lerobot_assets.video import decode_episode

# Data versions and the (dataset, episode) -> dataset mapping are marked beta, but are the documented
# way to do both; the warnings would only repeat on every run.
warnings.filterwarnings("ignore", category=BetaWarning)
GROUP = "lerobot"

_PER_DATASET = MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")
_METADATA_IN = {"episode_metadata": AssetIn(partition_mapping=_PER_DATASET)}


def _episode_of(context: AssetExecutionContext) -> tuple[str, int]:
    keys = context.partition_key.keys_by_dimension
    return keys["dataset"], int(keys["episode"])


def _episode_meta(episode_metadata: dict[str, Any], dataset: str, index: int) -> DatasetMeta:
    """Re-read ``meta/`` of the pinned copy, failing fast for a (dataset, episode) pair that does not exist."""
    if index not in episode_metadata["episodes"]:
        known = sorted(episode_metadata["episodes"])
        raise Failure(
            f"dataset {dataset!r} has no episode {index} at revision {episode_metadata['revision'][:12]} "
            f"(it has {len(known)} episodes: {known[0]}..{known[-1]}); the episode dimension is shared "
            "by all datasets, so launch only pairs that exist (`lerobot-assets ingest --episodes`)"
            if known
            else f"dataset {dataset!r} has no episodes"
        )
    return read_dataset(episode_metadata["path"], dataset)


def _episode_asset(check: str, description: str, *, blocking: bool = False, **kwargs: Any):
    """Decorator of a per-episode asset: (dataset, episode) partitions, ``episode_metadata`` in, one check."""

    def decorate(fn):
        spec = AssetCheckSpec(check, asset=fn.__name__, blocking=blocking, description=description)
        return asset(
            partitions_def=episode_partitions,
            ins=_METADATA_IN,
            code_version=CODE_VERSION,
            group_name=GROUP,
            check_specs=[spec],
            **kwargs,
        )(fn)

    return decorate


def _data_version(episode_metadata: dict[str, Any], index: int) -> DataVersion:
    return DataVersion(episode_data_version(episode_metadata["episodes"][index]["fingerprint"]))


@asset(partitions_def=dataset_partitions, code_version=CODE_VERSION, group_name=GROUP, kinds={"huggingface"})
def hf_snapshot(context: AssetExecutionContext, storage: StorageResource, hub: HubResource) -> Output[dict]:
    """The dataset's source pinned to an exact revision (Hub commit sha, git HEAD or content hash), copied locally."""
    name = context.partition_key
    source = storage.home.dataset_source(name)
    context.log.info(f"pinning {source.kind} source {source.source!r} (revision {source.revision or 'latest'})")
    snapshot = pin(source, storage.home.sources(name), hub.settings())
    context.log.info(f"{name}: revision {snapshot.revision}, {snapshot.files} files, {snapshot.bytes} bytes")
    value = {
        "dataset": name,
        "source": source.source,
        "kind": source.kind,
        "revision": snapshot.revision,
        "path": str(snapshot.path),
    }
    return Output(
        value,
        metadata={
            "source": source.source,
            "revision": snapshot.revision,
            "files": snapshot.files,
            "bytes": snapshot.bytes,
            "path": MetadataValue.path(str(snapshot.path)),
        },
        data_version=DataVersion(snapshot.revision),
    )


@asset(partitions_def=dataset_partitions, code_version=CODE_VERSION, group_name=GROUP)
def episode_metadata(context: AssetExecutionContext, hf_snapshot: dict) -> Output[dict]:
    """``meta/`` of the pinned dataset: episodes, tasks, cameras, and a fingerprint of every episode's inputs.

    Registers the dataset's episodes as partitions of the shared ``episode`` dimension.
    """
    name = context.partition_key
    meta = read_dataset(hf_snapshot["path"], name)
    fingerprints = episode_fingerprints(meta)
    existing = set(context.instance.get_dynamic_partitions(episode_dimension.name))
    new_keys = [episode_key(i) for i in sorted(meta.episodes) if episode_key(i) not in existing]
    if new_keys:
        context.instance.add_dynamic_partitions(episode_dimension.name, new_keys)
    episodes = {
        i: {"length": e.length, "tasks": list(e.tasks), "fingerprint": fingerprints[i]}
        for i, e in sorted(meta.episodes.items())
    }
    context.log.info(
        f"{name}: {meta.version}, {len(episodes)} episodes, {sum(e.length for e in meta.episodes.values())} frames, "
        f"cameras {meta.cameras}, {meta.fps:g} fps"
    )
    task_counts: dict[str, int] = {}
    for e in meta.episodes.values():
        for task in e.tasks:
            task_counts[task] = task_counts.get(task, 0) + 1
    value = {
        **hf_snapshot,
        "codebase_version": meta.version,
        "fps": meta.fps,
        "cameras": meta.cameras,
        "episodes": episodes,
    }
    return Output(
        value,
        metadata={
            "revision": hf_snapshot["revision"],
            "codebase_version": meta.version,
            "episodes": len(episodes),
            "frames": sum(e["length"] for e in episodes.values()),
            "cameras": MetadataValue.json(meta.cameras),
            "fps": meta.fps,
            "fingerprints": MetadataValue.json({episode_key(i): e["fingerprint"] for i, e in episodes.items()}),
            "tasks": MetadataValue.md(
                "| task | episodes |\n|---|---|\n" + "\n".join(f"| {t} | {n} |" for t, n in sorted(task_counts.items()))
            ),
        },
        data_version=DataVersion(hf_snapshot["revision"]),
    )


@_episode_asset("finite_values", "No NaN or infinite values in the numeric features (stored anyway, but flagged).")
def telemetry_frame(context: AssetExecutionContext, episode_metadata: dict):
    """One episode's telemetry rows (state, action, effort, index columns), checked for gaps and order."""
    dataset, index = _episode_of(context)
    meta = _episode_meta(episode_metadata, dataset, index)
    table = read_episode_telemetry(meta, index)
    bad = {}
    for feature in meta.value_features:
        values = feature_array(table, feature).reshape(table.num_rows, -1)
        rows = np.flatnonzero(~np.isfinite(values.astype(np.float64)).all(axis=1))
        if len(rows):
            bad[feature.key] = {"rows": len(rows), "first_frame": int(rows[0])}
    if bad:
        context.log.warning(f"{dataset} episode {index}: non-finite values in {bad}")
    yield Output(
        table,
        metadata={"rows": table.num_rows, "columns": MetadataValue.json(table.column_names)},
        data_version=_data_version(episode_metadata, index),
    )
    yield AssetCheckResult(
        check_name="finite_values",
        passed=not bad,
        severity=AssetCheckSeverity.WARN,
        metadata={"non_finite": MetadataValue.json(bad)},
    )


@_episode_asset(
    "frames_aligned", "Every row has a frame per camera within the tolerance of its timestamp.", blocking=True
)
def decoded_camera_frames(
    context: AssetExecutionContext,
    episode_metadata: dict,
    telemetry_frame: pa.Table,
    storage: StorageResource,
    encoding: ImageEncodingResource,
):
    """Every camera's frame for every telemetry row, decoded from the episode's segment only and encoded.

    The frames go to a per-episode staging file; the asset's value is its path.
    """
    dataset, index = _episode_of(context)
    meta = _episode_meta(episode_metadata, dataset, index)
    context.log.info(f"{dataset} episode {index}: decoding {telemetry_frame.num_rows} frames x {len(meta.cameras)} cameras")
    started = time.perf_counter()
    decoded = decode_episode(
        meta,
        index,
        telemetry_frame["timestamp"].to_numpy(),
        image_format=encoding.image_format,
        quality=encoding.quality,
        tolerance_s=encoding.tolerance_s,
    )
    seconds = time.perf_counter() - started
    frames = telemetry_frame.num_rows * len(decoded)
    rate = frames / max(seconds, 1e-9)
    context.log.info(f"{dataset} episode {index}: decoded {frames} camera-frames in {seconds:.2f} s ({rate:.0f}/s)")
    images = {camera: result.frames for camera, result in decoded.items()}
    image_stats = {camera: result.stats for camera, result in decoded.items() if result.stats is not None}
    path = write_frames(
        staging_path(storage.home.staging(dataset), index),
        telemetry_frame["frame_index"].to_pylist(),
        images,
        image_stats,
    )
    yield Output(
        {"path": str(path), "cameras": list(images), "frames": telemetry_frame.num_rows},
        metadata={
            "camera_frames": frames,
            "frames_per_second": round(rate, 1),
            "bytes": path.stat().st_size,
            "staging_file": MetadataValue.path(str(path)),
            "thumbnails": MetadataValue.md(thumbnails_markdown(images, count=4)),
        },
        data_version=_data_version(episode_metadata, index),
    )
    offsets = {camera: result.max_offset_s for camera, result in decoded.items()}
    yield AssetCheckResult(
        check_name="frames_aligned",
        passed=all(len(f) == telemetry_frame.num_rows for f in images.values()),
        metadata={"max_offset_s": MetadataValue.json(offsets), "tolerance_s": min(encoding.tolerance_s, 1 / meta.fps)},
    )


@_episode_asset(
    "episode_rows_match",
    "The table holds exactly one row per frame of the episode, frame_index 0..length-1.",
    blocking=True,
    kinds={"deeplake"},
)
def deeplake_table(
    context: AssetExecutionContext,
    episode_metadata: dict,
    telemetry_frame: pa.Table,
    decoded_camera_frames: dict,
    storage: StorageResource,
    encoding: ImageEncodingResource,
):
    """The episode's rows in the dataset's Deeplake table, replacing any earlier rows of that episode."""
    dataset, index = _episode_of(context)
    meta = _episode_meta(episode_metadata, dataset, index)
    staged = staging_path(storage.home.staging(dataset), index)
    if not staged.is_file():
        raise Failure(
            f"dataset {dataset!r}, episode {index}: staging file {str(staged)!r} is missing; "
            "materialize decoded_camera_frames for this partition again"
        )
    frame_index, images, image_stats = read_frames(staged)
    if frame_index != telemetry_frame["frame_index"].to_pylist():
        raise Failure(
            f"dataset {dataset!r}, episode {index}: staging file {str(staged)!r} holds frames "
            f"{frame_index[:3]}... but the telemetry has {telemetry_frame.num_rows} rows; re-materialize both"
        )
    rows = episode_rows(meta, telemetry_frame, images)
    stats = episode_stats({k: v for k, v in rows.items() if k not in meta.cameras}, {}) | image_stats
    url = storage.table_url(dataset)
    revision = episode_metadata["revision"]
    with write_lock(storage.home.lock(dataset)):
        ds = open_table(url, meta, encoding.image_format)
        set_table_metadata(ds, source=episode_metadata["source"], revision=revision)
        store_episode_stats(ds, index, stats)  # committed with the rows
        deleted, written = replace_episode(ds, index, rows, f"ingest {dataset} episode {index} at revision {revision}")
        version = ds.version
        stored = episode_frames(ds, index)
    staged.unlink()
    context.log.info(f"{dataset} episode {index}: wrote {written} rows (replaced {deleted}), table version {version}")
    series = {f.key: feature_array(telemetry_frame, f) for f in meta.value_features if f.key in ("observation.state", "action")}
    yield MaterializeResult(
        metadata={
            "rows_written": written,
            "rows_replaced": deleted,
            "table_version": version,
            "table": MetadataValue.path(url),
            "revision": revision,
            "preview": MetadataValue.md(thumbnails_markdown(images, count=4)),
            "telemetry_plot": MetadataValue.md(png_markdown(plot_series(series), "state and action")),
        },
        data_version=_data_version(episode_metadata, index),
    )
    expected = episode_metadata["episodes"][index]["length"]
    yield AssetCheckResult(
        check_name="episode_rows_match",
        passed=bool(np.array_equal(np.sort(stored), np.arange(expected))),
        metadata={"rows_in_table": len(stored), "expected": expected},
    )


class SnapshotConfig(Config):
    """Run config of ``training_snapshot``."""

    tag: Optional[str] = None  # default: <dataset>-<UTC time>-<revision[:8]>


@asset(
    partitions_def=dataset_partitions,
    deps=[AssetDep("deeplake_table", partition_mapping=_PER_DATASET)],
    code_version=CODE_VERSION,
    group_name=GROUP,
    kinds={"deeplake"},
)
def training_snapshot(
    context: AssetExecutionContext, config: SnapshotConfig, storage: StorageResource
) -> MaterializeResult:
    """A tag on the table's current version: the exact, reloadable data a training run names."""
    dataset = context.partition_key
    url = storage.table_url(dataset)
    with write_lock(storage.home.lock(dataset)):
        started = time.perf_counter()
        build_indexes(url)
        context.log.info(f"{dataset}: indexes up to date ({time.perf_counter() - started:.1f} s)")
        ds = open_writable(url)
        revision = summarize(ds, url).metadata.get("revision", "unknown")
        tag = config.tag or f"{dataset}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{revision[:8]}"
        version = create_tag(ds, tag, url)
    summary = summarize(ds, url)
    context.log.info(f"{dataset}: tagged version {version} as {tag!r} ({summary.rows} rows)")
    return MaterializeResult(
        metadata={
            "tag": tag,
            "version": version,
            "rows": summary.rows,
            "episodes": MetadataValue.json(sorted(summary.episodes)),
            "revision": revision,
            "table": MetadataValue.path(url),
        }
    )


ALL_ASSETS = [hf_snapshot, episode_metadata, telemetry_frame, decoded_camera_frames, deeplake_table, training_snapshot]
DATASET_ASSETS = [hf_snapshot, episode_metadata]
EPISODE_ASSETS = [telemetry_frame, decoded_camera_frames, deeplake_table]
