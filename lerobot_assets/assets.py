"""The Dagster asset graph: thin wiring around the plain functions of the other modules.

    hf_snapshot -> episode_metadata -> telemetry_frame -> decoded_camera_frames -> deeplake_table -> training_snapshot

``hf_snapshot``, ``episode_metadata`` and ``training_snapshot`` are partitioned by dataset; the
three per-episode assets by (dataset, episode). The episode dimension is shared by every dataset,
so a pair that does not exist in a dataset fails fast with a message saying so.

The three per-episode assets are one ``multi_asset`` (one step per episode run): they stay three
assets with their own materializations, data versions and checks, and any subset of them can be
materialized, but when all three run together nothing is written to disk or pickled between them.
"""

# First, before any library that brings its own mimalloc loads (Deeplake, pyarrow): see its docstring.
import lerobot_assets.allocator  # noqa: F401, I001

import functools
import time
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetMaterialization,
    AssetSpec,
    BetaWarning,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    Output,
    TableColumn,
    TableSchema,
    asset,
    multi_asset,
)

from lerobot_assets.errors import TableError, where
from lerobot_assets.fingerprint import episode_fingerprints
from lerobot_assets.lerobot_format import DatasetMeta, feature_array, read_dataset, read_episode_telemetry
from lerobot_assets.partitions import dataset_partitions, episode_dimension, episode_key, episode_partition, episode_partitions
from lerobot_assets.preview import plot_series, png_markdown, thumbnails_markdown
from lerobot_assets.relabel import describe_reapplied, episode_labels, reapply_labels
from lerobot_assets.resources import HubResource, ImageEncodingResource, StorageResource
from lerobot_assets.source import pin
from lerobot_assets.staging import StagedFrames, read_frames, staging_path, write_frames
from lerobot_assets.stats import episode_stats, store_episode_stats
from lerobot_assets.table import (
    build_indexes,
    check_table_fits,
    column_types,
    create_tag,
    episode_frames,
    episode_rows,
    episode_versions,
    ingest_metadata,
    open_read_only,
    open_table,
    open_writable,
    refresh_indexes,
    replace_episode,
    set_table_metadata,
    summarize,
    write_lock,
)
from lerobot_assets.versions import CODE_VERSION, episode_data_version
from lerobot_assets.video import DecodedCamera, decode_episode

# Data versions and the (dataset, episode) -> dataset mapping are marked beta, but are the documented
# way to do both; the warnings would only repeat on every run.
warnings.filterwarnings("ignore", category=BetaWarning)
#: Asset groups, one per use: ingesting a dataset, tagging it for training, relabelling it.
INGEST_GROUP, TRAINING_GROUP, LABELS_GROUP = "ingest", "training", "labels"

_PER_DATASET = MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")
TELEMETRY, FRAMES, TABLE = AssetKey("telemetry_frame"), AssetKey("decoded_camera_frames"), AssetKey("deeplake_table")


def _episode_of(context: AssetExecutionContext) -> tuple[str, int]:
    keys = context.partition_key.keys_by_dimension
    return keys["dataset"], int(keys["episode"])


def _episode_meta(episode_metadata: dict[str, Any], dataset: str, index: int) -> DatasetMeta:
    """``meta/`` of the pinned copy, failing fast for a (dataset, episode) pair that does not exist."""
    if index not in episode_metadata["episodes"]:
        known = sorted(episode_metadata["episodes"])
        raise Failure(
            f"dataset {dataset!r} has no episode {index} at revision {episode_metadata['revision'][:12]} "
            f"(it has {len(known)} episodes: {known[0]}..{known[-1]}); the episode dimension is shared "
            "by all datasets, so launch only pairs that exist (`lerobot-assets ingest --episodes`)"
            if known
            else f"dataset {dataset!r} has no episodes"
        )
    return _pinned_meta(episode_metadata["path"], dataset)


@functools.lru_cache(maxsize=8)
def _pinned_meta(path: str, dataset: str) -> DatasetMeta:
    """``meta/`` of a pinned copy, read once per process rather than in every episode run (it lists
    every episode, so re-reading it costs O(episodes) per run). A pinned copy never changes: its
    directory is named after its revision."""
    return read_dataset(path, dataset)


@asset(partitions_def=dataset_partitions, code_version=CODE_VERSION, group_name=INGEST_GROUP, kinds={"huggingface"})
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
        "bytes": snapshot.bytes,
    }
    return Output(
        value,
        metadata={
            "source": source.source,
            "revision": snapshot.revision,
            "files": snapshot.files,
            "bytes": snapshot.bytes,
            "bytes_hashed": snapshot.hashed_bytes,
            # not "path": Dagster's IO manager writes its own "path" (where it pickled the value)
            "pinned_copy": MetadataValue.path(str(snapshot.path)),
        },
        data_version=DataVersion(snapshot.revision),
    )


@asset(partitions_def=dataset_partitions, code_version=CODE_VERSION, group_name=INGEST_GROUP, kinds={"json", "parquet"})
def episode_metadata(
    context: AssetExecutionContext, hf_snapshot: dict, storage: StorageResource, encoding: ImageEncodingResource
) -> Output[dict]:
    """``meta/`` of the pinned dataset, checked: episodes, tasks, cameras, and a fingerprint of every episode's inputs.

    Refuses a dataset whose metadata disagrees with its files (totals, dtypes, fps) or that its
    existing table cannot hold (a new camera, another shape), before any episode is written.
    Registers the dataset's episodes as partitions of the shared ``episode`` dimension, and deletes
    from the table the rows of episodes that are gone at this revision: whichever path reads a new
    revision (the CLI, the UI, the sensor) removes them.
    """
    name = context.partition_key
    meta = read_dataset(hf_snapshot["path"], name)
    if meta.empty_episodes:
        context.log.warning(
            f"{name}: skipping episodes {list(meta.empty_episodes)}: meta/ lists them with 0 frames, nothing to store"
        )
    fingerprints = episode_fingerprints(meta, storage.home.error_details(name))
    check_table_fits(storage.table_url(name), meta, encoding.image_format)
    removed, labels_lost = _remove_vanished(context, storage, set(meta.episodes), hf_snapshot["revision"])
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
        "skipped": list(meta.empty_episodes),
        "table_metadata": ingest_metadata(meta, encoding.image_format)
        | {"source": hf_snapshot["source"], "revision": hf_snapshot["revision"], "source_bytes": hf_snapshot.get("bytes")},
        "removed": removed,
        "labels_lost": labels_lost,
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
            "removed": MetadataValue.json(removed),
            "fingerprints": MetadataValue.json({episode_key(i): e["fingerprint"] for i, e in episodes.items()}),
            "tasks": MetadataValue.md(
                "| task | episodes |\n|---|---|\n" + "\n".join(f"| {t} | {n} |" for t, n in sorted(task_counts.items()))
            ),
        },
        data_version=DataVersion(hf_snapshot["revision"]),
    )


def _remove_vanished(
    context: AssetExecutionContext, storage: StorageResource, upstream: set[int], revision: str
) -> tuple[list[int], list[dict[str, Any]]]:
    """Delete the rows of the table's episodes that are not in ``upstream`` (one commit each; earlier
    tags keep them), each recorded as a materialization of its ``deeplake_table`` partition, then
    recreate the indexes (Deeplake's miss rows after deletes). Returns the episodes removed and the
    merged labels their rows carried (they cannot be re-applied)."""
    dataset = context.partition_key
    url = storage.table_url(dataset)
    try:
        held = summarize(open_read_only(url), url).episodes
    except TableError:
        return [], []  # no table yet
    gone = sorted(set(held) - upstream)
    lost: list[dict[str, Any]] = []
    if not gone:
        return gone, lost
    with write_lock(url):
        ds = open_writable(url)
        for index in gone:
            lost += [{**label, "reason": "episode removed upstream"} for label in episode_labels(ds, index)]
            store_episode_stats(ds, index, None)
            deleted, _ = replace_episode(ds, index, None, f"remove {dataset} episode {index}: gone at revision {revision}")
            context.log.info(f"{dataset}: removed episode {index} ({deleted} rows), gone at revision {revision[:12]}")
            context.log_event(
                AssetMaterialization(
                    asset_key=TABLE,
                    partition=str(episode_partition(dataset, index)),
                    metadata={"removed": True, "rows_removed": deleted, "table_version": ds.version, "revision": revision},
                )
            )
        refresh_indexes(ds)
        ds.commit(f"recreate indexes after removing episodes {gone}")
    return gone, lost


_METADATA_DEP = AssetDep("episode_metadata", partition_mapping=_PER_DATASET)
Event = MaterializeResult | AssetCheckResult


def _episode_spec(key: AssetKey, description: str, upstream: tuple[AssetKey, ...] = (), **kwargs: Any) -> AssetSpec:
    deps = [_METADATA_DEP, *upstream]
    return AssetSpec(key, description=description, deps=deps, code_version=CODE_VERSION, group_name=INGEST_GROUP, **kwargs)


@multi_asset(
    name="episode_assets",
    specs=[
        _episode_spec(TELEMETRY, "One episode's telemetry rows (state, action, effort, index columns), checked for gaps and order.", kinds={"parquet"}),
        _episode_spec(FRAMES, "Every camera's frame for every telemetry row, decoded from the episode's segment only and encoded.", (TELEMETRY,), kinds={"video", "jpeg"}),
        _episode_spec(TABLE, "The episode's rows in the dataset's Deeplake table, replacing any earlier rows of that episode.", (TELEMETRY, FRAMES), kinds={"deeplake"}),
    ],
    check_specs=[
        AssetCheckSpec("finite_values", asset=TELEMETRY, description="No NaN or infinite values in the numeric features (stored anyway, but flagged)."),
        AssetCheckSpec("frames_aligned", asset=FRAMES, blocking=True, description="Every row has a frame per camera within the tolerance of its timestamp."),
        AssetCheckSpec("episode_rows_match", asset=TABLE, blocking=True, description="The table holds exactly one row per frame of the episode, frame_index 0..length-1."),
    ],
    partitions_def=episode_partitions,
    ins={"episode_metadata": AssetIn()},
    can_subset=True,
)
def episode_assets(
    context: AssetExecutionContext, episode_metadata: dict, storage: StorageResource, encoding: ImageEncodingResource
) -> Iterator[Event]:
    """The three per-episode assets in one step, so frames go from the decoder to the table in memory.

    Any subset can be materialized: ``decoded_camera_frames`` without ``deeplake_table`` leaves its
    frames in a staging file, which a later ``deeplake_table`` run uses while it matches the
    episode's inputs (and otherwise decodes again). Telemetry is re-read from the pinned source
    (a small parquet slice), so nothing passes through an IO manager.
    """
    events = _episode_events(context, episode_metadata, storage, encoding)
    # Dagster records the inputs of an asset computed in the same step as the latest materialization
    # of that upstream asset in any partition; recording this episode's results back to back, while
    # no other episode run records its own, keeps that the materialization of this partition.
    with storage.home.events_lock():
        yield from _selected(context, events)


def _episode_events(
    context: AssetExecutionContext, episode_metadata: dict, storage: StorageResource, encoding: ImageEncodingResource
) -> list[Event]:
    """Compute the selected per-episode assets; their materializations and check results, in graph order."""
    dataset, index = _episode_of(context)
    meta = _episode_meta(episode_metadata, dataset, index)
    fingerprint = episode_metadata["episodes"][index]["fingerprint"]
    version = DataVersion(episode_data_version(fingerprint))
    selected = context.selected_asset_keys
    telemetry = read_episode_telemetry(meta, index)
    events = _telemetry_events(context, meta, telemetry, version) if TELEMETRY in selected else []
    if FRAMES not in selected and TABLE not in selected:
        return events
    unchanged = _unchanged_events(context, storage, episode_metadata, version)
    if unchanged is not None:
        return events + unchanged
    staged_at = staging_path(storage.home.staging(dataset), index)
    staged = None if FRAMES in selected else read_frames(staged_at)
    decoded = None
    if staged is not None and (staged.fingerprint, staged.frame_index) == (fingerprint, telemetry["frame_index"].to_pylist()):
        context.log.info(f"{dataset} episode {index}: using the frames staged in {str(staged_at)!r}")
    else:
        if FRAMES not in selected:
            context.log.info(f"{dataset} episode {index}: no staged frames for these inputs; decoding them")
        staged, decoded = _decode_frames(context, meta, telemetry, fingerprint, encoding)
    preview = MetadataValue.md(thumbnails_markdown(staged.images, count=4))  # both assets show it
    if decoded is not None and FRAMES in selected:
        events += _frames_events(meta, telemetry, decoded, version, encoding, preview)
    if TABLE in selected:
        events += _table_events(context, meta, episode_metadata, telemetry, staged, version, storage, encoding, preview)
        staged_at.unlink(missing_ok=True)
    else:
        write_frames(staged_at, staged)
        context.log.info(f"{dataset} episode {index}: frames staged in {str(staged_at)!r} for deeplake_table")
    return events


def _unchanged_events(
    context: AssetExecutionContext, storage: StorageResource, episode_metadata: dict[str, Any], version: DataVersion
) -> list[Event] | None:
    """When the table holds this episode written from the same inputs by the same code (its recorded
    data version), the results that say so, without decoding; otherwise None.

    The frames and table keep their data version, so nothing downstream turns stale; the table
    check is evaluated on the rows the table holds, ``frames_aligned`` keeps its result from the
    run that decoded them.
    """
    dataset, index = _episode_of(context)
    url = storage.table_url(dataset)
    try:
        ds = open_read_only(url)
    except TableError:
        return None
    if episode_versions(ds).get(index) != version.value:
        return None
    context.log.info(f"{dataset} episode {index}: unchanged in table version {ds.version} (data version {version.value}); not decoded")
    metadata = {"unchanged": True, "table_version": ds.version}
    events: list[Event] = [MaterializeResult(asset_key=FRAMES, metadata=metadata, data_version=version)]
    stored = episode_frames(ds, index)
    return events + [
        MaterializeResult(
            asset_key=TABLE,
            metadata={**metadata, "rows_written": 0, "dagster/row_count": len(stored), "table": MetadataValue.path(url),
                      "revision": episode_metadata["revision"]},
            data_version=version,
        ),
        _rows_check(stored, episode_metadata["episodes"][index]["length"]),
    ]


def _rows_check(stored: np.ndarray, expected: int) -> AssetCheckResult:
    """``episode_rows_match``: the table holds one row per frame of the episode, frame_index 0..length-1."""
    return AssetCheckResult(
        asset_key=TABLE,
        check_name="episode_rows_match",
        passed=bool(np.array_equal(np.sort(stored), np.arange(expected))),
        metadata={"rows_in_table": len(stored), "expected": expected},
    )


def _selected(context: AssetExecutionContext, events: list[Event]) -> Iterator[Event]:
    """The events of the assets and checks this run materializes."""
    for event in events:
        if isinstance(event, AssetCheckResult):
            if AssetCheckKey(event.asset_key, event.check_name) in context.selected_asset_check_keys:
                yield event
        elif event.asset_key in context.selected_asset_keys:
            yield event


def _telemetry_events(context: AssetExecutionContext, meta: DatasetMeta, table: pa.Table, version: DataVersion) -> list[Event]:
    bad = {}
    for feature in meta.value_features:
        values = feature_array(table, feature).reshape(table.num_rows, -1)
        rows = np.flatnonzero(~np.isfinite(values.astype(np.float64)).all(axis=1))
        if len(rows):
            bad[feature.key] = {"rows": len(rows), "first_frame": int(rows[0])}
    if bad:
        dataset, index = _episode_of(context)
        context.log.warning(f"{dataset} episode {index}: non-finite values in {bad}")
    return [
        MaterializeResult(
            asset_key=TELEMETRY,
            metadata={"rows": table.num_rows, "columns": MetadataValue.json(table.column_names)},
            data_version=version,
        ),
        AssetCheckResult(
            asset_key=TELEMETRY,
            check_name="finite_values",
            passed=not bad,
            severity=AssetCheckSeverity.WARN,
            metadata={"non_finite": MetadataValue.json(bad)},
        ),
    ]


@dataclass(frozen=True)
class _Decoded:
    """One episode's cameras as decoded in this run, and how fast."""

    cameras: dict[str, DecodedCamera]
    seconds: float


def _decode_frames(
    context: AssetExecutionContext, meta: DatasetMeta, telemetry: pa.Table, fingerprint: str, encoding: ImageEncodingResource
) -> tuple[StagedFrames, _Decoded]:
    dataset, index = _episode_of(context)
    context.log.info(f"{dataset} episode {index}: decoding {telemetry.num_rows} frames x {len(meta.cameras)} cameras")
    started = time.perf_counter()
    decoded = decode_episode(
        meta,
        index,
        telemetry["timestamp"].to_numpy(),
        image_format=encoding.image_format,
        quality=encoding.quality,
        tolerance_s=encoding.tolerance_s,
    )
    seconds = time.perf_counter() - started
    frames = telemetry.num_rows * len(decoded)
    context.log.info(f"{dataset} episode {index}: decoded {frames} camera-frames in {seconds:.2f} s ({frames / max(seconds, 1e-9):.0f}/s)")
    staged = StagedFrames(
        fingerprint=fingerprint,
        frame_index=telemetry["frame_index"].to_pylist(),
        images={camera: result.frames for camera, result in decoded.items()},
        stats={camera: result.stats for camera, result in decoded.items() if result.stats is not None},
    )
    return staged, _Decoded(decoded, seconds)


def _frames_events(
    meta: DatasetMeta, telemetry: pa.Table, decoded: _Decoded, version: DataVersion, encoding: ImageEncodingResource, preview: MetadataValue
) -> list[Event]:
    frames = telemetry.num_rows * len(decoded.cameras)
    return [
        MaterializeResult(
            asset_key=FRAMES,
            metadata={
                "camera_frames": frames,
                "frames_per_second": round(frames / max(decoded.seconds, 1e-9), 1),
                "bytes": sum(len(f) for result in decoded.cameras.values() for f in result.frames),
                "thumbnails": preview,
            },
            data_version=version,
        ),
        AssetCheckResult(
            asset_key=FRAMES,
            check_name="frames_aligned",
            passed=all(len(result.frames) == telemetry.num_rows for result in decoded.cameras.values()),
            metadata={
                "max_offset_s": MetadataValue.json({camera: result.max_offset_s for camera, result in decoded.cameras.items()}),
                "tolerance_s": min(encoding.tolerance_s, 1 / meta.fps),
            },
        ),
    ]


def _table_events(
    context: AssetExecutionContext,
    meta: DatasetMeta,
    episode_metadata: dict[str, Any],
    telemetry: pa.Table,
    staged: StagedFrames,
    version: DataVersion,
    storage: StorageResource,
    encoding: ImageEncodingResource,
    preview: MetadataValue,
) -> list[Event]:
    """Replace the episode's rows in the table (one commit, with its statistics)."""
    dataset, index = _episode_of(context)
    rows = episode_rows(meta, telemetry, staged.images)
    data_file = where(dataset, index, meta.root / meta.episode(index).data_path)
    stats = episode_stats({k: v for k, v in rows.items() if k not in meta.cameras}, {}, data_file) | staged.stats
    url = storage.table_url(dataset)
    revision = episode_metadata["revision"]
    with write_lock(url):
        ds = open_table(url, meta, encoding.image_format)
        set_table_metadata(ds, **episode_metadata["table_metadata"])
        store_episode_stats(ds, index, stats)  # committed with the rows
        rows, labels = reapply_labels(ds, index, rows)  # merged labels hold across a re-ingest
        deleted, written = replace_episode(
            ds, index, rows, f"ingest {dataset} episode {index} at revision {revision}", data_version=version.value
        )
        table_version = ds.version
        stored = episode_frames(ds, index)
        schema = column_types(ds)
    context.log.info(f"{dataset} episode {index}: wrote {written} rows (replaced {deleted}), table version {table_version}")
    if labels["reapplied"] or labels["not_reapplied"]:
        context.log.warning(f"{dataset} episode {index}, new rows: {describe_reapplied(labels)}")
    series = {f.key: feature_array(telemetry, f) for f in meta.value_features if f.key in ("observation.state", "action")}
    expected = episode_metadata["episodes"][index]["length"]
    return [
        MaterializeResult(
            asset_key=TABLE,
            metadata={
                "rows_written": written,
                "rows_replaced": deleted,
                "dagster/row_count": written,
                "dagster/column_schema": MetadataValue.table_schema(
                    TableSchema(columns=[TableColumn(name, kind) for name, kind in schema.items()])
                ),
                "labels_reapplied": MetadataValue.json(labels["reapplied"]),
                "labels_not_reapplied": MetadataValue.json(labels["not_reapplied"]),
                "table_version": table_version,
                "table": MetadataValue.path(url),
                "revision": revision,
                "preview": preview,
                "telemetry_plot": MetadataValue.md(png_markdown(plot_series(series), "state and action")),
            },
            data_version=version,
        ),
        _rows_check(stored, expected),
    ]


class SnapshotConfig(Config):
    """Run config of ``training_snapshot``."""

    tag: Optional[str] = None  # default: see default_tag


def default_tag(dataset: str, revision: str, existing: Collection[str]) -> str:
    """``<dataset>-<UTC time>-<revision[:8]>``, then ``-2``, ``-3``... for snapshots taken within the same second."""
    base = f"{dataset}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{revision[:8]}"
    tag, count = base, 1
    while tag in existing:
        count += 1
        tag = f"{base}-{count}"
    return tag


@asset(
    partitions_def=dataset_partitions,
    deps=[AssetDep("deeplake_table", partition_mapping=_PER_DATASET)],
    code_version=CODE_VERSION,
    group_name=TRAINING_GROUP,
    kinds={"deeplake"},
)
def training_snapshot(
    context: AssetExecutionContext, config: SnapshotConfig, storage: StorageResource
) -> MaterializeResult:
    """A tag on the table's current version: the exact, reloadable data a training run names."""
    dataset = context.partition_key
    url = storage.table_url(dataset)
    with write_lock(url):
        started = time.perf_counter()
        build_indexes(url)
        context.log.info(f"{dataset}: indexes up to date ({time.perf_counter() - started:.1f} s)")
        ds = open_writable(url)
        revision = summarize(ds, url).metadata.get("revision", "unknown")
        tag = config.tag or default_tag(dataset, revision, ds.tags.names())
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


ALL_ASSETS = [hf_snapshot, episode_metadata, episode_assets, training_snapshot]
DATASET_ASSETS = [hf_snapshot, episode_metadata]
EPISODE_ASSETS = [episode_assets]
