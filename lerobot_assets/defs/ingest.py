"""The Dagster asset graph: thin wiring around the plain functions of the other modules.

    hf_snapshot -> episode_metadata -> telemetry_frame -> decoded_camera_frames -> deeplake_table -> training_snapshot

Each registered dataset gets these assets of its own (:func:`dataset_assets`, keys under the
dataset's name, see :mod:`lerobot_assets.defs.partitions`). ``hf_snapshot``, ``episode_metadata`` and
``training_snapshot`` are one per dataset; the three per-episode assets are partitioned by the
dataset's own episodes, so every partition the UI shows exists.

The three per-episode assets are one ``multi_asset`` (one step per run): they stay three assets
with their own materializations and checks, and any subset of them can be materialized, but when
all three run together nothing is written to disk or pickled between them. A run covers a range of
episodes (``BackfillPolicy.multi_run``), decoded in parallel threads: Dagster's per-run cost is paid
once per batch, not once per episode.
"""

import functools
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    BetaWarning,
    DagsterInstance,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    TableColumn,
    TableSchema,
    asset,
    multi_asset,
)

from lerobot_assets.core.allocator import return_free_memory
from lerobot_assets.core.errors import LeRobotAssetsError, TableError, where
from lerobot_assets.core.lerobot.fingerprint import episode_fingerprints
from lerobot_assets.core.lerobot.meta import DatasetMeta, read_dataset
from lerobot_assets.core.lerobot.stats import episode_stats
from lerobot_assets.core.lerobot.telemetry import feature_array, read_episode_telemetry
from lerobot_assets.core.media.preview import plot_series, png_markdown, thumbnails_markdown
from lerobot_assets.core.media.staging import StagedFrames, read_frames, staging_folder, staging_url, write_frames
from lerobot_assets.core.media.video import DecodedCamera, decode_episode
from lerobot_assets.core.sources import pin, pin_revision
from lerobot_assets.core.storage import delete_object
from lerobot_assets.core.table.access import open_read_only, open_writable
from lerobot_assets.core.table.episode_stats import STATS_COLUMN, stats_cells
from lerobot_assets.core.table.episodes import episode_frames, episode_ranges, episode_rows, replace_episode
from lerobot_assets.core.table.labels import describe_reapplied, episode_labels, reapply_labels
from lerobot_assets.core.table.lease import hold, recording
from lerobot_assets.core.table.metadata import episode_versions, summarize
from lerobot_assets.core.table.schema import (
    check_table_fits,
    column_types,
    ingest_metadata,
    open_table,
    refresh_indexes,
)
from lerobot_assets.core.table.versions import CODE_VERSION, episode_data_version
from lerobot_assets.core.table.writer import RunWriter
from lerobot_assets.defs.partitions import (
    INGEST_GROUP,
    asset_prefix,
    dataset_asset_key,
    episode_index,
    episode_key,
    episode_partitions,
    episode_pool,
)
from lerobot_assets.defs.resources import HubResource, ImageEncodingResource, StorageResource
from lerobot_assets.defs.snapshot import training_snapshot_asset

# Data versions are marked beta, but are the documented way to record them; the warnings would only
# repeat on every run.
warnings.filterwarnings("ignore", category=BetaWarning)

#: Episodes per run of a backfill (and of ``lerobot-assets ingest``): Dagster's cost per run (~1 s of
#: run and event bookkeeping) is paid once per batch; a failed batch is retried as a whole.
EPISODES_PER_RUN = 50


@dataclass(frozen=True)
class _Keys:
    """The asset keys of one dataset's assets."""

    pinned: AssetKey  # hf_snapshot: the pinned source (the spec's asset name)
    metadata: AssetKey
    telemetry: AssetKey
    frames: AssetKey
    table: AssetKey

    @staticmethod
    def of(dataset: str) -> "_Keys":
        names = ("hf_snapshot", "episode_metadata", "telemetry_frame", "decoded_camera_frames", "deeplake_table")
        return _Keys(*(dataset_asset_key(dataset, name) for name in names))


@dataclass(frozen=True)
class _Episode:
    """One episode of one dataset, with the keys its events go to."""

    dataset: str
    index: int
    keys: _Keys

    def __str__(self) -> str:
        return f"{self.dataset} episode {self.index}"


def _episode_meta(episode_metadata: dict[str, Any], episode: _Episode) -> DatasetMeta:
    """``meta/`` of the pinned copy, failing fast for an episode that is not at this revision."""
    if episode.index not in episode_metadata["episodes"]:
        raise LeRobotAssetsError(
            f"dataset {episode.dataset!r} has no episode {episode.index} at revision {episode_metadata['revision'][:12]} "
            f"(it has {len(episode_metadata['episodes'])} episodes); materialize episode_metadata first"
        )
    return _pinned_meta(episode_metadata["pinned_copy"], episode.dataset)


@functools.lru_cache(maxsize=8)
def _pinned_meta(path: str, dataset: str) -> DatasetMeta:
    """``meta/`` of a pinned copy, read once per process rather than in every episode run (it lists
    every episode, so re-reading it costs O(episodes) per run). A pinned copy never changes: its
    directory is named after its revision."""
    return read_dataset(path, dataset)


def _pinned_copy(dataset: str, revision: str, storage: StorageResource, hub: HubResource) -> str:
    """This machine's copy of ``dataset`` at ``revision``: a run may land on a machine that has not
    pinned it yet, and pins it then (asset values hold no local path)."""
    source = storage.registry.dataset_source(dataset)
    return str(pin_revision(source, revision, storage.home.sources(dataset), hub.settings()).path)


def _pin_source(context: AssetExecutionContext, dataset: str, storage: StorageResource, hub: HubResource) -> Output[dict]:
    source = storage.registry.dataset_source(dataset)
    context.log.info(f"pinning {source.kind} source {source.source!r} (revision {source.revision or 'latest'})")
    pinned = pin(source, storage.home.sources(dataset), hub.settings())
    context.log.info(f"{dataset}: revision {pinned.revision}, {pinned.files} files, {pinned.bytes} bytes")
    value = {
        "dataset": dataset,
        "source": source.source,
        "kind": source.kind,
        "revision": pinned.revision,
        "bytes": pinned.bytes,
    }
    return Output(
        value,
        metadata={
            "source": source.source,
            "revision": pinned.revision,
            "files": pinned.files,
            "bytes": pinned.bytes,
            "bytes_hashed": pinned.hashed_bytes,
            "pinned_copy": MetadataValue.path(str(pinned.path)),  # on the machine that pinned it
        },
        data_version=DataVersion(pinned.revision),
    )


def _read_metadata(
    context: AssetExecutionContext,
    dataset: str,
    hf_snapshot: dict,
    storage: StorageResource,
    hub: HubResource,
    encoding: ImageEncodingResource,
) -> Output[dict]:
    meta = read_dataset(_pinned_copy(dataset, hf_snapshot["revision"], storage, hub), dataset)
    if meta.empty_episodes:
        context.log.warning(
            f"{dataset}: skipping episodes {list(meta.empty_episodes)}: meta/ lists them with 0 frames, nothing to store"
        )
    fingerprints = episode_fingerprints(meta, storage.home.error_details(dataset))
    url = storage.table_url(dataset)
    check_table_fits(url, meta, encoding.image_format)
    with hold(url):  # the table is created once, here, before its episodes' runs fan out
        open_table(url, meta, encoding.image_format)
    removed, labels_lost = _remove_vanished(context, dataset, storage, set(meta.episodes), hf_snapshot["revision"])
    _sync_partitions(context.instance, dataset, meta.episodes)
    episodes = {
        i: {"length": e.length, "tasks": list(e.tasks), "fingerprint": fingerprints[i]}
        for i, e in sorted(meta.episodes.items())
    }
    context.log.info(
        f"{dataset}: {meta.version}, {len(episodes)} episodes, {sum(e.length for e in meta.episodes.values())} frames, "
        f"cameras {meta.cameras}, {meta.fps:g} fps"
    )
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
    return Output(value, metadata=_metadata_entries(value, meta), data_version=DataVersion(hf_snapshot["revision"]))


def _metadata_entries(value: dict[str, Any], meta: DatasetMeta) -> dict[str, Any]:
    """What the UI shows of an ``episode_metadata`` materialization (the CLI reads ``fingerprints``,
    ``removed``, ``skipped`` and ``labels_lost`` back from it)."""
    episodes = value["episodes"]
    tasks = Counter(task for e in meta.episodes.values() for task in e.tasks)
    return {
        "revision": value["revision"],
        "codebase_version": meta.version,
        "episodes": len(episodes),
        "frames": sum(e["length"] for e in episodes.values()),
        "cameras": MetadataValue.json(meta.cameras),
        "fps": meta.fps,
        "removed": MetadataValue.json(value["removed"]),
        "skipped": MetadataValue.json(value["skipped"]),
        "labels_lost": MetadataValue.json(value["labels_lost"]),
        "fingerprints": MetadataValue.json({episode_key(i): e["fingerprint"] for i, e in episodes.items()}),
        "tasks": MetadataValue.md(
            "| task | episodes |\n|---|---|\n" + "\n".join(f"| {t} | {n} |" for t, n in sorted(tasks.items()))
        ),
    }


def _sync_partitions(instance: DagsterInstance, dataset: str, episodes: Collection[int]) -> None:
    """Make the dataset's episode partitions exactly ``episodes``: add the new ones (in order, so a
    range of keys is a range of episodes), delete those of episodes gone upstream."""
    name = episode_partitions(dataset).name
    existing = instance.get_dynamic_partitions(name)
    wanted = {episode_key(i) for i in episodes}
    for key in sorted(set(existing) - wanted):
        instance.delete_dynamic_partition(name, key)
    new = [episode_key(i) for i in sorted(episodes) if episode_key(i) not in set(existing)]
    if new:
        instance.add_dynamic_partitions(name, new)


def _remove_vanished(
    context: AssetExecutionContext, dataset: str, storage: StorageResource, upstream: set[int], revision: str
) -> tuple[list[int], list[dict[str, Any]]]:
    """Delete the rows of the table's episodes that are not in ``upstream`` (one commit; earlier
    tags keep them), recreating the indexes (Deeplake's miss rows after deletes). Returns the
    episodes removed and the merged labels their rows carried (they cannot be re-applied)."""
    url = storage.table_url(dataset)
    try:
        held = summarize(open_read_only(url), url).episodes
    except TableError:
        return [], []  # no table yet
    gone = sorted(set(held) - upstream)
    lost: list[dict[str, Any]] = []
    if not gone:
        return gone, lost
    with hold(url):
        ds = open_writable(url)
        for index in gone:
            lost += [{**label, "reason": "episode removed upstream"} for label in episode_labels(ds, index)]
            (deleted, _), _ = replace_episode(ds, index, None)
            context.log.info(f"{dataset}: removed episode {index} ({deleted} rows), gone at revision {revision[:12]}")
        refresh_indexes(ds)
        ds.commit(f"remove {dataset} episodes {gone}: gone at revision {revision}; indexes recreated")
    return gone, lost


Event = MaterializeResult | AssetCheckResult


def _episode_assets(dataset: str, keys: _Keys) -> AssetsDefinition:
    def spec(key: AssetKey, description: str, upstream: tuple[AssetKey, ...] = (), **kwargs: Any) -> AssetSpec:
        deps = [keys.metadata, *upstream]
        return AssetSpec(key, description=description, deps=deps, code_version=CODE_VERSION, group_name=INGEST_GROUP, **kwargs)

    @multi_asset(
        name=f"{asset_prefix(dataset)}__episode_assets",
        specs=[
            spec(keys.telemetry, "One episode's telemetry rows (state, action, effort, index columns), checked for gaps and order.", kinds={"parquet"}),
            spec(keys.frames, "Every camera's frame for every telemetry row, decoded from the episode's segment only and encoded.", (keys.telemetry,), kinds={"video", "jpeg"}),
            spec(keys.table, "The episode's rows in the dataset's Deeplake table, replacing any earlier rows of that episode.", (keys.telemetry, keys.frames), kinds={"deeplake"}),
        ],
        check_specs=[
            AssetCheckSpec("finite_values", asset=keys.telemetry, description="No NaN or infinite values in the numeric features (stored anyway, but flagged)."),
            AssetCheckSpec("frames_aligned", asset=keys.frames, blocking=True, description="Every row has a frame per camera within the tolerance of its timestamp."),
            AssetCheckSpec("episode_rows_match", asset=keys.table, blocking=True, description="The table holds exactly one row per frame of the episode, frame_index 0..length-1."),
        ],
        partitions_def=episode_partitions(dataset),
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=EPISODES_PER_RUN),
        pool=episode_pool(dataset),  # instance-wide limit on the dataset's episode runs (docs/deploy.md)
        ins={"episode_metadata": AssetIn(key=keys.metadata)},
        can_subset=True,
    )
    def episode_assets(
        context: AssetExecutionContext,
        episode_metadata: dict,
        storage: StorageResource,
        hub: HubResource,
        encoding: ImageEncodingResource,
    ) -> Iterator[Event]:
        """The three per-episode assets of a range of episodes in one step, so frames go from the
        decoder to the table in memory.

        Any subset can be materialized: ``decoded_camera_frames`` without ``deeplake_table`` leaves
        its frames in a staging file, which a later ``deeplake_table`` run uses while it matches the
        episode's inputs (and otherwise decodes again). Telemetry is re-read from the pinned source
        (a small parquet slice), so nothing passes through an IO manager.
        """
        episodes = [_Episode(dataset, episode_index(key), keys) for key in context.partition_keys]
        pinned_copy = _pinned_copy(dataset, episode_metadata["revision"], storage, hub)
        episode_metadata = {**episode_metadata, "pinned_copy": pinned_copy}  # this machine's
        results = _run_episodes(context, episodes, episode_metadata, storage, encoding)
        failed = {e: error for e, (error, _) in results.items() if error}
        if failed:  # nothing is recorded for a failed run: the whole range is retried (unchanged episodes cheaply)
            raise Failure(
                f"{len(failed)} of {len(episodes)} episodes failed: " + "; ".join(f"{e}: {m}" for e, m in failed.items()),
                metadata={"failed": MetadataValue.json({str(e.index): m for e, m in failed.items()})},
            )
        # Dagster records the inputs of an asset computed in the same step as the latest materialization
        # of that upstream asset in any partition; recording this run's results back to back, while
        # no other run of the dataset (on any machine) records its own, keeps that the materialization
        # of these partitions: a lease beside the table, apart from its write lease.
        with recording(storage.table_url(dataset)):
            if len(episodes) == 1:
                yield from _selected(context, results[episodes[0]][1])
            else:
                yield from _selected(context, _batch_events(context, {e: events for e, (_, events) in results.items()}))

    return episode_assets


#: What an episode's work leaves for after the run's commit: its table events, built from the
#: committed table and where each episode's rows are in it.
_AfterCommit = Callable[[Any, dict[int, range], str], list[Event]]


def _recorded_versions(
    context: AssetExecutionContext, url: str, episodes: list[_Episode], episode_metadata: dict
) -> dict[int, str]:
    """The data versions the table records for its episodes, except for those of ``episodes`` whose
    rows are not one per frame (a write that failed its row check, rows written twice): a current
    data version over wrong rows is rewritten, not recorded unchanged."""
    try:
        held = open_read_only(url)
        recorded, ranges = episode_versions(held), episode_ranges(held)
    except TableError:
        return {}
    lengths = episode_metadata["episodes"]
    wrong = [e.index for e in episodes if e.index in recorded and len(ranges.get(e.index, ())) != lengths[e.index]["length"]]
    if wrong:
        context.log.warning(f"{episodes[0].dataset}: the table does not hold one row per frame of episodes {wrong}; rewriting them")
    return {index: value for index, value in recorded.items() if index not in wrong}


def _run_episodes(
    context: AssetExecutionContext,
    episodes: list[_Episode],
    episode_metadata: dict,
    storage: StorageResource,
    encoding: ImageEncodingResource,
) -> dict[_Episode, tuple[str | None, list[Event]]]:
    """Each episode's events, or the error that stopped it. Episodes are decoded in parallel threads
    (PyAV and libjpeg-turbo release the GIL); their writes go to the table one at a time and are
    committed once, for the whole run (:class:`~lerobot_assets.core.table.writer.RunWriter`); the table's
    events are made after that commit, so nothing is recorded for rows a dead process never
    committed. A failed episode does not stop the others' rows from being committed."""
    dataset = episodes[0].dataset
    url = storage.table_url(dataset)
    recorded = _recorded_versions(context, url, episodes, episode_metadata)
    with RunWriter(url, encoding.image_format, episode_metadata["table_metadata"]) as writer:
        def one(episode: _Episode) -> tuple[str | None, list[Event | _AfterCommit]]:
            try:
                return None, _episode_events(context, episode, episode_metadata, recorded, storage, encoding, writer)
            except (LeRobotAssetsError, Failure) as exc:
                message = exc.description if isinstance(exc, Failure) else str(exc)
                context.log.error(f"{episode}: {message}")
                return message, []
            finally:
                return_free_memory()

        workers = max(1, min(encoding.workers or os.cpu_count() or 1, len(episodes)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="episode") as pool:
            outcomes = dict(zip(episodes, pool.map(one, episodes)))
        message = f"ingest {dataset} episodes {_spans(sorted(writer.pending))} at revision {episode_metadata['revision']}"
        try:
            committed, version = writer.commit(message)
        except (LeRobotAssetsError, Failure) as exc:  # a lost lease: nothing of this run was committed
            return {e: (error or str(exc), []) for e, (error, _) in outcomes.items()}
    if committed:
        context.log.info(f"{dataset}: committed episodes {_spans(committed)} as table version {version}")
    lost = {i: "not written: another episode's write in this run failed and undid the run's uncommitted writes"
            for i in writer.lost}
    ds, ranges, results = None, {}, {}
    for episode, (error, items) in outcomes.items():
        if error or episode.index in lost:
            results[episode] = (error or lost[episode.index], [])
            continue
        events: list[Event] = []
        for item in items:
            if callable(item):
                if ds is None:  # once per run, after the commit
                    ds = open_read_only(url)
                    ranges = episode_ranges(ds)
                events += item(ds, ranges, version or ds.version)
            else:
                events.append(item)
        results[episode] = (None, events)
    return results


def _spans(episodes: list[int]) -> str:
    """``0-49`` for consecutive episodes, else their list: the commit message stays short."""
    if episodes and episodes == list(range(episodes[0], episodes[-1] + 1)) and len(episodes) > 2:
        return f"{episodes[0]}-{episodes[-1]}"
    return str(episodes)


def _batch_events(context: AssetExecutionContext, events: dict[_Episode, list[Event]]) -> list[Event]:
    """One result per asset and check for a run of several episodes: Dagster records one
    materialization per partition of the range; each gets its episode's metadata (``add_asset_metadata``),
    and its own data version is recorded with the rows in the table (Dagster keeps one per run)."""
    summary: dict[AssetKey, dict[str, Any]] = {}
    checks: dict[tuple[AssetKey, str], list[tuple[_Episode, AssetCheckResult]]] = {}
    for episode, episode_events in events.items():
        for event in episode_events:
            if isinstance(event, AssetCheckResult):
                checks.setdefault((event.asset_key, event.check_name), []).append((episode, event))
                continue
            metadata = {"unchanged": False, **(event.metadata or {})}
            if event.data_version is not None:
                metadata["data_version"] = event.data_version.value
            if event.asset_key in context.selected_asset_keys:
                context.add_asset_metadata(metadata, asset_key=event.asset_key, partition_key=episode_key(episode.index))
            totals = summary.setdefault(event.asset_key, {"run_episodes": 0, "run_unchanged": 0})
            totals["run_episodes"] += 1
            totals["run_unchanged"] += bool(metadata["unchanged"])
    results: list[Event] = [MaterializeResult(asset_key=key, metadata=totals) for key, totals in summary.items()]
    for (key, name), evaluated in checks.items():
        failed = {str(e.index): {k: v.value for k, v in r.metadata.items()} for e, r in evaluated if not r.passed}
        results.append(
            AssetCheckResult(
                asset_key=key,
                check_name=name,
                passed=not failed,
                severity=evaluated[0][1].severity,
                metadata={"episodes": len(evaluated), "failed": MetadataValue.json(failed)},
            )
        )
    return results


def _episode_events(
    context: AssetExecutionContext,
    episode: _Episode,
    episode_metadata: dict,
    recorded: dict[int, str],
    storage: StorageResource,
    encoding: ImageEncodingResource,
    writer: RunWriter,
) -> list[Event | _AfterCommit]:
    """Compute the selected per-episode assets; their materializations and check results, in graph
    order (the table's made after the run's commit)."""
    keys, index = episode.keys, episode.index
    meta = _episode_meta(episode_metadata, episode)
    fingerprint = episode_metadata["episodes"][index]["fingerprint"]
    version = DataVersion(episode_data_version(fingerprint))
    selected = context.selected_asset_keys
    telemetry = read_episode_telemetry(meta, index)
    events: list[Event | _AfterCommit] = []
    if keys.telemetry in selected:
        events += _telemetry_events(context, episode, meta, telemetry, version)
    if keys.frames not in selected and keys.table not in selected:
        return events
    if recorded.get(index) == version.value:
        return [*events, _unchanged_events(context, episode, storage, episode_metadata, version)]
    staged_at = staging_url(staging_folder(storage.home.tables, episode.dataset), index)
    staged = None if keys.frames in selected else read_frames(staged_at)
    decoded = None
    if staged is not None and (staged.fingerprint, staged.frame_index) == (fingerprint, telemetry["frame_index"].to_pylist()):
        context.log.info(f"{episode}: using the frames staged in {staged_at!r}")
    else:
        if keys.frames not in selected:
            context.log.info(f"{episode}: no staged frames for these inputs; decoding them")
        staged, decoded = _decode_frames(context, episode, meta, telemetry, fingerprint, encoding)
    preview = MetadataValue.md(thumbnails_markdown(staged.images, count=4))  # both assets show it
    if decoded is not None and keys.frames in selected:
        events += _frames_events(keys, meta, telemetry, decoded, version, encoding, preview)
    if keys.table in selected:
        events.append(_table_events(context, episode, meta, episode_metadata, telemetry, staged, version, storage, writer, preview))
        delete_object(staged_at)
    else:
        write_frames(staged_at, staged)
        context.log.info(f"{episode}: frames staged in {staged_at!r} for deeplake_table")
    return events


def _unchanged_events(
    context: AssetExecutionContext, episode: _Episode, storage: StorageResource, episode_metadata: dict[str, Any], version: DataVersion
) -> _AfterCommit:
    """The results saying the table holds this episode written from the same inputs by the same code
    (its recorded data version), without decoding.

    The frames and table keep their data version, so nothing downstream turns stale; the table
    check is evaluated on the rows the table holds, ``frames_aligned`` keeps its result from the
    run that decoded them.
    """
    url = storage.table_url(episode.dataset)

    def events(ds: Any, ranges: dict[int, range], table_version: str) -> list[Event]:
        context.log.info(f"{episode}: unchanged in table version {table_version} (data version {version.value}); not decoded")
        metadata = {"unchanged": True, "table_version": table_version}
        stored = episode_frames(ds, ranges.get(episode.index, range(0)))
        return [
            MaterializeResult(asset_key=episode.keys.frames, metadata=metadata, data_version=version),
            MaterializeResult(
                asset_key=episode.keys.table,
                metadata={**metadata, "rows_written": 0, "dagster/row_count": len(stored), "table": MetadataValue.path(url),
                          "revision": episode_metadata["revision"]},
                data_version=version,
            ),
            _rows_check(episode.keys, stored, episode_metadata["episodes"][episode.index]["length"]),
        ]

    return events


def _rows_check(keys: _Keys, stored: np.ndarray, expected: int) -> AssetCheckResult:
    """``episode_rows_match``: the table holds one row per frame of the episode, frame_index 0..length-1."""
    return AssetCheckResult(
        asset_key=keys.table,
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


def _telemetry_events(
    context: AssetExecutionContext, episode: _Episode, meta: DatasetMeta, table: pa.Table, version: DataVersion
) -> list[Event]:
    bad = {}
    for feature in meta.value_features:
        values = feature_array(table, feature).reshape(table.num_rows, -1)
        rows = np.flatnonzero(~np.isfinite(values.astype(np.float64)).all(axis=1))
        if len(rows):
            bad[feature.key] = {"rows": len(rows), "first_frame": int(rows[0])}
    if bad:
        context.log.warning(f"{episode}: non-finite values in {bad}")
    return [
        MaterializeResult(
            asset_key=episode.keys.telemetry,
            metadata={"rows": table.num_rows, "columns": MetadataValue.json(table.column_names)},
            data_version=version,
        ),
        AssetCheckResult(
            asset_key=episode.keys.telemetry,
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
    context: AssetExecutionContext,
    episode: _Episode,
    meta: DatasetMeta,
    telemetry: pa.Table,
    fingerprint: str,
    encoding: ImageEncodingResource,
) -> tuple[StagedFrames, _Decoded]:
    index = episode.index
    context.log.info(f"{episode}: decoding {telemetry.num_rows} frames x {len(meta.cameras)} cameras")
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
    context.log.info(f"{episode}: decoded {frames} camera-frames in {seconds:.2f} s ({frames / max(seconds, 1e-9):.0f}/s)")
    staged = StagedFrames(
        fingerprint=fingerprint,
        frame_index=telemetry["frame_index"].to_pylist(),
        images={camera: result.frames for camera, result in decoded.items()},
        stats={camera: result.stats for camera, result in decoded.items() if result.stats is not None},
    )
    return staged, _Decoded(decoded, seconds)


def _frames_events(
    keys: _Keys,
    meta: DatasetMeta, telemetry: pa.Table, decoded: _Decoded, version: DataVersion, encoding: ImageEncodingResource, preview: MetadataValue
) -> list[Event]:
    frames = telemetry.num_rows * len(decoded.cameras)
    return [
        MaterializeResult(
            asset_key=keys.frames,
            metadata={
                "camera_frames": frames,
                "frames_per_second": round(frames / max(decoded.seconds, 1e-9), 1),
                "bytes": sum(len(f) for result in decoded.cameras.values() for f in result.frames),
                "thumbnails": preview,
            },
            data_version=version,
        ),
        AssetCheckResult(
            asset_key=keys.frames,
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
    episode: _Episode,
    meta: DatasetMeta,
    episode_metadata: dict[str, Any],
    telemetry: pa.Table,
    staged: StagedFrames,
    version: DataVersion,
    storage: StorageResource,
    writer: RunWriter,
    preview: MetadataValue,
) -> _AfterCommit:
    """Replace the episode's rows in the table, with its statistics (committed with the run's)."""
    dataset, index = episode.dataset, episode.index
    rows = episode_rows(meta, telemetry, staged.images)
    data_file = where(dataset, index, meta.root / meta.episode(index).data_path)
    stats = episode_stats({k: v for k, v in rows.items() if k not in meta.cameras}, location=data_file) | staged.stats
    rows[STATS_COLUMN] = stats_cells(stats, telemetry.num_rows)
    # merged labels hold across a re-ingest
    deleted, written, labels = writer.replace(meta, index, rows, version.value, lambda ds, new: reapply_labels(ds, index, new))
    context.log.info(f"{episode}: wrote {written} rows (replaced {deleted}), to be committed with the run")
    if labels["reapplied"] or labels["not_reapplied"]:
        context.log.warning(f"{episode}, new rows: {describe_reapplied(labels)}")
    url, revision = storage.table_url(dataset), episode_metadata["revision"]
    series = {f.key: feature_array(telemetry, f) for f in meta.value_features if f.key in ("observation.state", "action")}
    expected = episode_metadata["episodes"][index]["length"]

    def events(ds: Any, ranges: dict[int, range], table_version: str) -> list[Event]:
        schema = column_types(ds)
        return [
            MaterializeResult(
                asset_key=episode.keys.table,
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
            _rows_check(episode.keys, episode_frames(ds, ranges.get(index, range(0))), expected),
        ]

    return events


@dataclass(frozen=True)
class DatasetAssets:
    """One dataset's ingest and training assets."""

    hf_snapshot: AssetsDefinition
    episode_metadata: AssetsDefinition
    episodes: AssetsDefinition
    training_snapshot: AssetsDefinition

    @property
    def all(self) -> list[AssetsDefinition]:
        return [self.hf_snapshot, self.episode_metadata, self.episodes, self.training_snapshot]


def dataset_assets(dataset: str) -> DatasetAssets:
    """The assets of ``dataset``: thin wiring of the functions above, under keys prefixed with its name."""
    keys = _Keys.of(dataset)

    @asset(key=keys.pinned, code_version=CODE_VERSION, group_name=INGEST_GROUP, kinds={"huggingface"})
    def hf_snapshot(context: AssetExecutionContext, storage: StorageResource, hub: HubResource) -> Output[dict]:
        """The dataset's source pinned to an exact revision (Hub commit sha, git HEAD or content hash), copied locally."""
        return _pin_source(context, dataset, storage, hub)

    @asset(
        key=keys.metadata,
        ins={"hf_snapshot": AssetIn(key=keys.pinned)},
        code_version=CODE_VERSION,
        group_name=INGEST_GROUP,
        kinds={"json", "parquet"},
    )
    def episode_metadata(
        context: AssetExecutionContext,
        hf_snapshot: dict,
        storage: StorageResource,
        hub: HubResource,
        encoding: ImageEncodingResource,
    ) -> Output[dict]:
        """``meta/`` of the pinned dataset, checked: episodes, tasks, cameras, and a fingerprint of every episode's inputs.

        Refuses a dataset whose metadata disagrees with its files (totals, dtypes, fps) or that its
        existing table cannot hold (a new camera, another shape), before any episode is written.
        Makes the dataset's episode partitions exactly its episodes, and deletes from the table the
        rows of episodes that are gone at this revision: whichever path reads a new revision (the
        CLI, the UI, the sensor) removes them.
        """
        return _read_metadata(context, dataset, hf_snapshot, storage, hub, encoding)

    training_snapshot = training_snapshot_asset(dataset)

    return DatasetAssets(hf_snapshot, episode_metadata, _episode_assets(dataset, keys), training_snapshot)
