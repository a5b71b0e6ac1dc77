"""Materializing the asset graph from Python and the CLI, through a persistent Dagster instance.

Runs launched here are recorded in ``$DAGSTER_HOME``'s instance when set, else in ``<home>/dagster``
(Dagster's default SQLite storage), so they show up in ``lerobot-assets ui`` / ``dagster dev``. ``ingest`` runs the dataset-level assets once, then
one run per episode partition that needs it, in this process and in parallel worker processes
(forked from this one, warm); table writes stay serialized by the table's write lease.
"""

import ctypes
import functools
import json
import logging
import multiprocessing
import os
import re
import shutil
import socket
import sys
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    ExecuteInProcessResult,
    MultiPartitionKey,
    RunsFilter,
)
from filelock import FileLock

from lerobot_assets.assets import DATASET_ASSETS, EPISODE_ASSETS, training_snapshot
from lerobot_assets.errors import LeRobotAssetsError, bounded
from lerobot_assets.home import DatasetSource, Home, check_name, name_from_source
from lerobot_assets.partitions import dataset_partitions, episode_partition
from lerobot_assets.relabel import describe_reapplied
from lerobot_assets.resources import HubResource, ImageEncodingResource, StorageResource, io_manager
from lerobot_assets.source import classify_source
from lerobot_assets.table import (
    open_read_only,
    open_tag,
    open_writable,
    refresh_indexes,
    storage_report,
    summarize,
    table_url,
    write_lock,
)
from lerobot_assets.versions import plan_changes, recorded_versions

log = logging.getLogger(__name__)
#: Tags on every run this module launches: who launched it, and which process (host:pid) runs it.
LAUNCHED_BY_TAG, LAUNCHED_BY = "launched-by", "lerobot-assets-cli"
PROCESS_TAG = "lerobot-assets/process"

_INSTANCE_YAML = """\
# Written by lerobot-assets: Dagster's default storage (SQLite files next to this file) and, as no
# compute_logs section is set, Dagster's default compute log manager (steps' stdout/stderr, under storage/).
storage:
  sqlite:
    base_dir: {base_dir}
telemetry:
  enabled: false
"""
#: Modules of the custom storages earlier versions wrote into the embedded instance's dagster.yaml.
_OLD_STORAGES = ("lerobot_assets.event_log", "lerobot_assets.run_storage")


@dataclass(frozen=True)
class Settings:
    """What every run needs to rebuild its resources, also in a worker process."""

    home: Path
    image_format: str = "jpeg"
    quality: int = 95

    def resources(self) -> dict[str, Any]:
        return {
            "storage": StorageResource(home_dir=str(self.home)),
            "hub": HubResource(),
            "encoding": ImageEncodingResource(image_format=self.image_format, quality=self.quality),
            "io_manager": io_manager(Home(self.home)),
        }


_instances: dict[Path, DagsterInstance] = {}
_instances_lock = threading.Lock()


def dagster_instance(home: Home) -> DagsterInstance:
    """The Dagster instance runs are recorded in, opened once per process: ``$DAGSTER_HOME``'s when
    it is set (a configured deployment, as Dagster's own tools do), else the embedded default
    instance in ``<home>/dagster``, created on first use with Dagster's default storage. Opening it
    marks failed the runs of CLI processes that were killed (:func:`fail_orphaned_runs`).
    """
    configured = os.environ.get("DAGSTER_HOME")
    key = Path(configured).absolute() if configured else home.dagster_home.absolute()
    with _instances_lock:
        if key not in _instances:
            _instances[key] = DagsterInstance.get() if configured else _open_instance(home.dagster_home)
            fail_orphaned_runs(_instances[key])
        return _instances[key]


def _open_instance(dagster_home: Path) -> DagsterInstance:
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    # Two processes creating the SQLite storage at once would both stamp its schema version.
    with FileLock(str(dagster_home / ".init.lock")):
        # An embedded instance written by an earlier version names storage classes that are gone; they
        # kept Dagster's default files, so Dagster's default storage reads the same records.
        if not config.exists() or any(module in config.read_text() for module in _OLD_STORAGES):
            config.write_text(_INSTANCE_YAML.format(base_dir=json.dumps(str(dagster_home.resolve()))))
        return DagsterInstance.from_config(str(dagster_home))


def failure_message(result: ExecuteInProcessResult) -> str:
    """The user-facing message of the first failed step (our own exception text, not Dagster's wrapper)."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error.cause is not None and error.cls_name.startswith("Dagster"):  # Dagster's wrapper
                error = error.cause
            text = error.message.strip().splitlines()[-1] if error.message else "step failed"
            return re.sub(rf"^[\w.]*\b{re.escape(error.cls_name)}: ", "", text) if error.cls_name else text
    return "run failed"


#: Dagster's console logger at INFO: progress and results, without the per-event DEBUG lines.
_LOGGING = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
#: With ``-q`` (the ``lerobot_assets`` logger set above INFO) Dagster's console logs nothing: a failed step's
#: traceback would repeat the one-line ``error:`` the command prints.
_QUIET_LOGGING = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@functools.lru_cache(maxsize=8)
def _definitions(settings: Settings) -> Definitions:
    # imported here: the code location imports the relabel assets, which import this module
    from lerobot_assets.definitions import build_definitions

    return build_definitions(settings.resources())


def _job_for(keys: set[AssetKey]) -> tuple[str, bool]:
    """The named job whose assets include every key of ``keys``, and whether ``keys`` are all of them."""
    from lerobot_assets.definitions import JOB_ASSETS

    for name, (assets, _) in JOB_ASSETS.items():
        job_keys = {key for asset in assets for key in asset.keys}
        if keys <= job_keys:
            return name, keys == job_keys
    raise ValueError(f"no job materializes {sorted(k.to_user_string() for k in keys)}")


def run_assets(
    instance: DagsterInstance,
    settings: Settings,
    selection: Sequence[AssetsDefinition | AssetKey],
    partition_key: Any,
    run_config: dict | None = None,
) -> ExecuteInProcessResult:
    """One in-process run of ``selection`` for one partition under the named job of its use, recorded
    in ``instance`` and tagged as launched by this CLI and this process; success or not."""
    keys = {key for item in selection for key in (item.keys if isinstance(item, AssetsDefinition) else [item])}
    name, whole = _job_for(keys)
    job = _definitions(settings).resolve_job_def(name)
    return job.execute_in_process(
        run_config={**(_QUIET_LOGGING if _quiet() else _LOGGING), **(run_config or {})},
        instance=instance,
        partition_key=str(partition_key),
        raise_on_error=False,
        tags={LAUNCHED_BY_TAG: LAUNCHED_BY, PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}"},
        asset_selection=None if whole else sorted(keys, key=AssetKey.to_user_string),  # a subset job costs a resolution
    )


def fail_orphaned_runs(instance: DagsterInstance) -> list[str]:
    """Mark failed the runs this CLI started in a process of this host that is gone (killed, out of
    memory), which would otherwise stay STARTED for ever; return their run ids."""
    host = socket.gethostname()
    started = instance.get_runs(
        filters=RunsFilter(statuses=[DagsterRunStatus.STARTED], tags={LAUNCHED_BY_TAG: LAUNCHED_BY})
    )
    failed = []
    for run in started:
        run_host, _, pid = run.tags.get(PROCESS_TAG, "").rpartition(":")
        if run_host == host and pid.isdigit() and not _alive(int(pid)):
            instance.report_run_failed(run, f"the lerobot-assets process that ran it (pid {pid}) ended without finishing it")
            failed.append(run.run_id)
    if failed:
        log.warning("marked %d runs of ended lerobot-assets processes as failed: %s", len(failed), failed)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _quiet() -> bool:
    return logging.getLogger("lerobot_assets").level > logging.INFO


def _run(instance: DagsterInstance, settings: Settings, selection: list, partition_key: Any, **kwargs: Any):
    result = run_assets(instance, settings, selection, partition_key, **kwargs)
    if not result.success:
        raise LeRobotAssetsError(users_paths(failure_message(result), Home(settings.home), partition_key))
    return result


def users_paths(message: str, home: Home, partition_key: Any) -> str:
    """``message`` with each path inside the dataset's pinned copies (``<home>/sources/<name>/<revision>``,
    or a Hub snapshot there) replaced by the source the user gave: the user's file, not our copy of it."""
    name = partition_key.keys_by_dimension["dataset"] if isinstance(partition_key, MultiPartitionKey) else partition_key
    try:
        source = home.dataset_source(name).source
    except LeRobotAssetsError:
        return message
    pins = home.sources(name)
    spellings = sorted({str(pins), str(pins.absolute()), str(pins.resolve())}, key=len, reverse=True)
    roots = "|".join(re.escape(p) for p in spellings)
    return re.sub(rf"(?:{roots})/(?:hf_cache/[^/]+/snapshots/)?[^/\s'\"]+", lambda _: source, message)


def _materialize_episode(settings: Settings, dataset: str, index: int) -> tuple[int, str | None]:
    """One run for one (dataset, episode) partition, here or in a worker process."""
    try:
        _run(dagster_instance(Home(settings.home)), settings, EPISODE_ASSETS, episode_partition(dataset, index))
    except LeRobotAssetsError as exc:
        return index, str(exc)
    finally:
        _return_free_memory()
    return index, None


_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if os.name == "posix" else None


def _return_free_memory() -> None:
    """Give the heap's free pages back to the system after an episode (glibc; elsewhere nothing).

    An episode run allocates and frees hundreds of MB of frames from several threads, which glibc
    keeps, fragmented, in per-thread arenas: without this, a worker's peak memory crept up
    episode after episode (measured: +30% over 20 episodes in one process, flat with it).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def spans(indices: Sequence[int], shown: int = 5) -> str:
    """Sorted episode indices as ranges in brackets, at most ``shown`` of them: ``[0-3, 7, 9-1000000]``,
    then how many more: a bounded text however many indices there are."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:shown])
    return f"[{text}]" + (f" and {len(runs) - shown} more ranges" if len(runs) > shown else "")


def parse_episodes(spec: str) -> list[int]:
    """Parse ``"0,3,7-9"`` into ``[0, 3, 7, 8, 9]``."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            if "-" in part:
                first, last = (int(x) for x in part.split("-", 1))
                if last < first:
                    raise ValueError
                out.update(range(first, last + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise LeRobotAssetsError(f"invalid episode list {spec!r}: expected e.g. '0,3,7-9'") from None
    return sorted(out)


def register(
    home: Home, source: str, name: str | None, revision: str | None, tables: str | None
) -> tuple[DatasetSource, bool]:
    """Record where dataset ``name`` comes from and where its table lives, and add its partition.

    Returns the entry and whether it is new.
    """
    kind = classify_source(source)
    location = str(Path(source).expanduser().resolve()) if kind == "local" else source
    name = check_name(name) if name is not None else name_from_source(source)
    url = table_url(tables or home.tables, name)
    try:
        previous = home.dataset_source(name)
    except LeRobotAssetsError:
        previous = None
    if previous is not None:
        if previous.source != location:
            raise LeRobotAssetsError(
                f"dataset {name!r} is already registered from {previous.source!r}; choose another --name"
            )
        if tables is not None and previous.table != url:
            raise LeRobotAssetsError(f"dataset {name!r} already has its table at {previous.table}; omit --tables")
        url = previous.table
    entry = DatasetSource(name=name, source=location, kind=kind, table=url, revision=revision)
    home.register(entry)
    instance = dagster_instance(home)
    if not instance.has_dynamic_partition(dataset_partitions.name, name):
        instance.add_dynamic_partitions(dataset_partitions.name, [name])
    return entry, previous is None


def ingest(
    source: str,
    *,
    name: str | None = None,
    revision: str | None = None,
    episodes: Sequence[int] | None = None,
    home: str | Path | None = None,
    tables: str | None = None,
    image_format: str = "jpeg",
    quality: int = 95,
    workers: int | None = None,
) -> dict[str, Any]:
    """Register ``source`` and materialize what changed: only episodes whose inputs differ from the table.

    Returns the JSON-able result printed by ``lerobot-assets ingest``.
    """
    home_ = Home.at(home)
    settings = Settings(home_.root, image_format, quality)
    entry, new = register(home_, source, name, revision, tables)
    try:
        return _ingest(settings, entry, episodes, workers)
    except BaseException:
        if new and not _table_episodes(entry.table):  # a failed first ingest leaves nothing behind
            _forget(home_, entry.name)
        raise


def _forget(home: Home, name: str) -> None:
    """Unregister ``name`` and delete its partition, pinned copies and staged frames."""
    home.unregister(name)
    dagster_instance(home).delete_dynamic_partition(dataset_partitions.name, name)
    for path in (home.sources(name), home.staging(name)):
        shutil.rmtree(path, ignore_errors=True)


def _ingest(
    settings: Settings, entry: DatasetSource, episodes: Sequence[int] | None, workers: int | None
) -> dict[str, Any]:
    """The body of :func:`ingest` once the dataset is registered (which undoes a failed first one)."""
    home_ = Home(settings.home)
    instance = dagster_instance(home_)
    log.info("resolving %s (%s)", entry.source, entry.kind)
    result = _run(instance, settings, DATASET_ASSETS, entry.name)
    metadata = result.output_for_node("episode_metadata")
    upstream = sorted(metadata["episodes"])
    requested = upstream if episodes is None else sorted(set(episodes))
    unknown = sorted(set(requested) - set(upstream))
    if unknown:
        raise LeRobotAssetsError(
            f"dataset {entry.name!r} has no episodes {spans(unknown)} at revision {metadata['revision'][:12]} "
            f"(it has {len(upstream)} episodes: {spans(upstream)})"
        )
    if metadata["skipped"]:
        log.warning("%s: skipped episodes %s: meta/ lists them with 0 frames", entry.name, spans(metadata["skipped"]))
    fingerprints = {i: metadata["episodes"][i]["fingerprint"] for i in requested}
    plan = plan_changes(recorded_versions(entry.table), fingerprints)
    log.info("%s: %d episodes to materialize, %d unchanged", entry.name, len(plan.todo), len(plan.unchanged))
    latest = instance.fetch_materializations(AssetKey("deeplake_table"), limit=1).records
    failures = _materialize_episodes(settings, entry.name, plan.todo, workers)
    labels = _label_reports(instance, entry.name, plan.todo, latest[0].storage_id if latest else None)
    labels["not_reapplied"] += metadata["labels_lost"]
    replaced = [i for i in plan.changed if i not in failures]  # a failed episode's rows are as they were
    if replaced:  # rows were deleted: Deeplake's indexes would miss rows (episode_metadata did it for removals)
        with write_lock(entry.table):
            ds = open_writable(entry.table)
            refresh_indexes(ds)
            ds.commit(f"recreate indexes after replacing episodes {sorted(replaced)}")
    if labels["reapplied"] or labels["not_reapplied"]:
        log.warning("%s, re-ingested episodes: %s", entry.name, describe_reapplied(labels))
    if failures:
        head = f"{len(failures)} of {len(plan.todo)} episodes failed"
        lines = {i: f"episode {i}: {message}" for i, message in failures.items()}
        raise LeRobotAssetsError(bounded(head, lines, home_.error_details(entry.name)))
    summary = summarize(open_read_only(entry.table), entry.table)
    return {
        "dataset": entry.name,
        "table": entry.table,
        "version": summary.version,
        "rows": summary.rows,
        "episodes": sorted(summary.episodes),
        "revision": metadata["revision"],
        "materialized": plan.todo,
        "added": plan.added,
        "changed": plan.changed,
        "unchanged": plan.unchanged,
        "removed": metadata["removed"],
        "labels": labels,
        "skipped": metadata["skipped"],
        **storage_report(entry.table, summary.rows, summary.metadata),
    }


def _label_reports(
    instance: DagsterInstance, dataset: str, indices: Sequence[int], after: int | None
) -> dict[str, list[dict[str, Any]]]:
    """The merged labels each episode run of this ingest re-applied, or could not, from their materializations."""
    report: dict[str, list[dict[str, Any]]] = {"reapplied": [], "not_reapplied": []}
    if not indices:
        return report
    records = instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=AssetKey("deeplake_table"),
            asset_partitions=[str(episode_partition(dataset, i)) for i in indices],
            after_storage_id=after,
        ),
        limit=len(indices) * 4,
    ).records
    for record in records:
        metadata = record.asset_materialization.metadata
        for key in report:
            if f"labels_{key}" in metadata:
                report[key] += metadata[f"labels_{key}"].value
    return report


def _table_episodes(url: str) -> dict[int, int]:
    try:
        return summarize(open_read_only(url), url).episodes
    except LeRobotAssetsError:
        return {}


def _worker_context() -> multiprocessing.context.BaseContext:
    """How worker processes start: forked on Linux while this is the process's only Python thread
    (as in the CLI: decoding threads live only within an episode run), spawned otherwise.

    A forked worker is a copy of this process as the episodes start: Dagster, Deeplake and PyAV
    imported, the instance open, ``meta/`` read. It decodes at once, where a worker forked from a
    server with Dagster preloaded first spent ~2.5 CPU-seconds importing the rest and warming up.
    Forking a process that has imported Deeplake is supported by Deeplake (it wraps ``os.fork`` to
    prepare its thread pools); Dagster's SQLite storage opens a connection per operation, so none
    is shared with the child. A thread of an embedding
    program (a notebook, a server) could hold a lock that the child would inherit held, and fork
    is unsafe on macOS: there workers are spawned and import everything first.
    """
    fork = sys.platform.startswith("linux") and threading.active_count() == 1
    return multiprocessing.get_context("fork" if fork else "spawn")


def _materialize_episodes(
    settings: Settings,
    dataset: str,
    indices: Sequence[int],
    workers: int | None,
) -> dict[int, str]:
    """Run one Dagster run per episode, here and in ``workers - 1`` worker processes (see
    :func:`_worker_context`); return {episode: error}.

    Whoever is free takes the next episode. This process is warm when the episodes start (Dagster
    and Deeplake imported, the instance open), so it begins at once.
    """
    helpers = min(workers or os.cpu_count() or 1, len(indices)) - 1
    pending = deque(indices)
    failures: dict[int, str] = {}
    errors: list[BaseException] = []  # of the worker pool (e.g. a worker killed); stop and report
    state = threading.Condition()
    finished = in_flight = 0

    def take() -> int | None:
        with state:
            return pending.popleft() if pending and not errors else None

    def record(index: int, error: str | None) -> None:
        nonlocal finished
        with state:
            finished += 1
            if error:
                failures[index] = error
                # progress, not the error: ingest's one error line names every failure (-q shows only that)
                log.info("%s episode %d failed: %s", dataset, index, error)
            log.info("%s: %d of %d episodes done", dataset, finished, len(indices))

    def dispatch() -> None:
        nonlocal in_flight
        index = take()
        if index is not None:
            future = pool.submit(_materialize_episode, settings, dataset, index)
            with state:
                in_flight += 1
            future.add_done_callback(collect)

    def collect(future: Future) -> None:
        nonlocal in_flight
        try:
            record(*future.result())
            dispatch()  # the next one is counted in flight before this one is counted out
        except BaseException as exc:
            with state:
                errors.append(exc)
        finally:
            with state:
                in_flight -= 1
                state.notify_all()

    def run_here() -> None:
        while (index := take()) is not None:
            record(*_materialize_episode(settings, dataset, index))

    if helpers < 1:
        run_here()
        return failures
    with ProcessPoolExecutor(max_workers=helpers, mp_context=_worker_context()) as pool:
        try:
            for _ in range(helpers):
                dispatch()
            run_here()
        except BrokenProcessPool as exc:  # a worker died before this process submitted to it
            with state:
                errors.append(exc)
        finally:
            with state:
                pending.clear()  # on an error here, workers finish their episode and take no other
                state.wait_for(lambda: in_flight == 0)
    if errors:
        raise LeRobotAssetsError(
            f"{dataset}: a worker process failed ({type(errors[0]).__name__}: {errors[0]}); the episodes "
            f"finished so far ({finished} of {len(indices)}) are in the table, run the ingest again for the rest"
        ) from errors[0]
    return failures


def snapshot(name: str, *, tag: str | None = None, home: str | Path | None = None) -> dict[str, Any]:
    """Materialize ``training_snapshot`` for ``name``: tag the table's current version."""
    home_ = Home.at(home)
    entry = home_.dataset_source(name)
    run_config = {"ops": {training_snapshot.op.name: {"config": {"tag": tag}}}}
    result = _run(dagster_instance(home_), Settings(home_.root), [training_snapshot], name, run_config=run_config)
    event = result.get_asset_materialization_events()[0].event_specific_data.materialization
    values = {key: value.value for key, value in event.metadata.items()}
    return {
        "dataset": name,
        "tag": values["tag"],
        "version": values["version"],
        "table": entry.table,
        "rows": values["rows"],
        "revision": values["revision"],
    }


def info(name: str, *, home: str | Path | None = None) -> dict[str, Any]:
    """What the table of ``name`` holds at head, with its tags and source revision."""
    home_ = Home.at(home)
    entry = home_.dataset_source(name)
    summary = summarize(open_read_only(entry.table), entry.table)
    return {
        "dataset": name,
        "source": entry.source,
        "table": entry.table,
        "version": summary.version,
        "rows": summary.rows,
        "episodes": sorted(summary.episodes),
        "tags": summary.tags,
        "revision": summary.metadata.get("revision"),
        **storage_report(entry.table, summary.rows, summary.metadata),
    }


def open_snapshot(dataset: str, tag: str, home: str | Path | None = None):
    """The read-only Deeplake dataset of ``dataset`` at ``tag``: the exact rows a training run used."""
    home_ = Home.at(home)
    return open_tag(home_.dataset_source(dataset).table, tag)
