"""Materializing the asset graph from Python and the CLI, through a persistent Dagster instance.

Runs launched here are recorded in ``$DAGSTER_HOME``'s instance when set, else in ``<home>/dagster``
(Dagster's default SQLite storage), so they show up in ``lerobot-assets ui`` / ``dagster dev``,
under the dataset's named jobs. ``ingest`` runs the dataset's ``ingest_dataset`` job once, then
its ``ingest_episodes`` job over ranges of episodes, the same runs a backfill from the UI makes.
"""

import functools
import json
import logging
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    DagsterEvent,
    DagsterEventType,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    ExecuteInProcessResult,
    RunsFilter,
)
from filelock import FileLock
from tqdm.auto import tqdm

from lerobot_assets.core.errors import LeRobotAssetsError, bounded
from lerobot_assets.core.media.staging import staging_folder
from lerobot_assets.core.names import check_name, name_from_source
from lerobot_assets.core.sources import classify_source
from lerobot_assets.core.storage import delete_folder
from lerobot_assets.core.table.access import open_read_only, open_tag, storage_report, table_url
from lerobot_assets.core.table.labels import describe_reapplied
from lerobot_assets.core.table.metadata import summarize
from lerobot_assets.core.table.registry import DatasetSource
from lerobot_assets.core.table.versions import plan_changes, recorded_versions
from lerobot_assets.defs.ingest import EPISODES_PER_RUN
from lerobot_assets.defs.partitions import (
    asset_prefix,
    dataset_asset_key,
    episode_key,
    episode_partitions,
    job_name,
    partition_ranges,
    range_tags,
)
from lerobot_assets.defs.resources import HubResource, ImageEncodingResource, StorageResource, TablesIOManager
from lerobot_assets.runtime.deployment import submit_job, submits, wait_for
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.registry import registry_of

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
    tables: str | None = None  # the tables root; None: $LEROBOT_ASSETS_TABLES, else <home>/tables
    image_format: str = "jpeg"
    quality: int = 95
    workers: int | None = None

    def run_config(self) -> dict[str, Any]:
        """The run config that gives a run launched elsewhere (by a deployment) these settings'
        resources; the Hub's stay the deployment's own (its token comes from its environment)."""
        return {
            name: {"config": resource.model_dump(exclude_none=True)}
            for name, resource in self.resources().items()
            if name != "hub"
        }

    def resources(self) -> dict[str, Any]:
        return {
            "storage": StorageResource(home_dir=str(self.home), tables=self.tables),
            "hub": HubResource(),
            "encoding": ImageEncodingResource(image_format=self.image_format, quality=self.quality, workers=self.workers),
            "io_manager": TablesIOManager(root=Home(self.home, self.tables).tables),
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


def failure_message(events: Iterable[DagsterEvent]) -> str:
    """The user-facing message of a run's first failed step (our own exception text, not Dagster's wrapper)."""
    for event in events:
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
def _definitions(settings: Settings, datasets: tuple[str, ...]) -> Definitions:
    # imported here: the code location imports the relabel assets, which import this module
    from lerobot_assets.definitions import build_definitions

    return build_definitions(settings.resources(), datasets)


def code_location(settings: Settings) -> Definitions:
    """The definitions of every dataset registered under the tables root, as ``dagster dev`` loads them."""
    registry = registry_of(Home(settings.home, settings.tables))
    return _definitions(settings, tuple(sorted(source.name for source in registry.registered())))


def run_job(
    instance: DagsterInstance,
    settings: Settings,
    dataset: str,
    use: str,
    partitions: Sequence[str] = (),
    assets: Sequence[AssetKey] | None = None,
    run_config: dict | None = None,
) -> ExecuteInProcessResult:
    """One in-process run of ``dataset``'s named job for ``use`` (see ``definitions.USES``), over
    ``partitions`` (one key, or a range from :func:`partition_ranges`), recorded in ``instance`` and
    tagged as launched by this CLI and this process; success or not. ``assets`` runs a subset."""
    job = code_location(settings).resolve_job_def(job_name(dataset, use))
    tags = {**_run_tags(partitions), PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}"}
    return job.execute_in_process(
        run_config={**(_QUIET_LOGGING if _quiet() else _LOGGING), **(run_config or {})},
        instance=instance,
        partition_key=partitions[0] if len(partitions) == 1 else None,
        raise_on_error=False,
        tags=tags,
        asset_selection=assets,
    )


def _run_tags(partitions: Sequence[str]) -> dict[str, str]:
    """Who launched a run, and the range of partitions it covers when there are several."""
    return {LAUNCHED_BY_TAG: LAUNCHED_BY, **(range_tags(partitions) if len(partitions) > 1 else {})}


@dataclass(frozen=True)
class Outcome:
    """A finished run, wherever it ran: its id and whether it succeeded (its events are in the instance)."""

    run_id: str
    success: bool

    def events(self, instance: DagsterInstance, of_type: DagsterEventType | None = None) -> list[DagsterEvent]:
        return [e.dagster_event for e in instance.all_logs(self.run_id, of_type=of_type) if e.dagster_event]


def launch_job(
    instance: DagsterInstance, settings: Settings, dataset: str, use: str, partitions: Sequence[str] = (), run_config: dict | None = None
) -> Outcome:
    """Run ``dataset``'s job for ``use`` the way ``instance`` runs jobs: submitted to its deployment
    (queued for its daemon, or launched elsewhere) and followed until it finishes, or else here, in
    process (:func:`run_job`)."""
    if not (os.environ.get("DAGSTER_HOME") and submits(instance)):  # the embedded instance: run here
        result = run_job(instance, settings, dataset, use, partitions, run_config=run_config)
        return Outcome(result.run_id, result.success)
    tags = _run_tags(partitions)
    if len(partitions) == 1:
        tags["dagster/partition"] = partitions[0]  # the tag Dagster's own launchers set for one partition
    config = {**(run_config or {}), "resources": settings.run_config()}
    run_id = submit_job(settings.home, job_name(dataset, use), config, tags)
    log.info("%s: submitted run %s of %s to the Dagster deployment", dataset, run_id, job_name(dataset, use))
    return Outcome(run_id, wait_for(instance, run_id) == DagsterRunStatus.SUCCESS)


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


def _run(instance: DagsterInstance, settings: Settings, dataset: str, use: str, **kwargs: Any) -> Outcome:
    outcome = launch_job(instance, settings, dataset, use, **kwargs)
    if not outcome.success:
        raise LeRobotAssetsError(users_paths(failure_message(outcome.events(instance)), Home(settings.home), dataset))
    return outcome


def _materialization(instance: DagsterInstance, outcome: Outcome, key: AssetKey) -> dict[str, Any]:
    """The metadata values of the materialization of ``key`` that the run ``outcome`` recorded."""
    for event in outcome.events(instance, DagsterEventType.ASSET_MATERIALIZATION):
        materialization = event.event_specific_data.materialization
        if materialization.asset_key == key:
            return {name: value.value for name, value in materialization.metadata.items()}
    raise LeRobotAssetsError(f"run {outcome.run_id} recorded no materialization of {key.to_user_string()}")


def users_paths(message: str, home: Home, name: str) -> str:
    """``message`` with each path inside the dataset's pinned copies (``<home>/sources/<name>/<revision>``,
    or a Hub snapshot there) replaced by the source the user gave: the user's file, not our copy of it."""
    entry = registry_of(home).get(name)
    if entry is None:
        return message
    source = entry.source
    pins = home.sources(name)
    spellings = sorted({str(pins), str(pins.absolute()), str(pins.resolve())}, key=len, reverse=True)
    roots = "|".join(re.escape(p) for p in spellings)
    return re.sub(rf"(?:{roots})/(?:hf_cache/[^/]+/snapshots/)?[^/\s'\"]+", lambda _: source, message)


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


def register(home: Home, source: str, name: str | None, revision: str | None) -> tuple[DatasetSource, bool]:
    """Record where dataset ``name`` comes from and where its table lives, in the registry of the
    home's tables root (a table registered earlier keeps its URL).

    Returns the entry and whether it is new.
    """
    kind = classify_source(source)
    location = str(Path(source).expanduser().resolve()) if kind == "local" else source
    name = check_name(name) if name is not None else name_from_source(source)
    url = table_url(home.tables, name)
    registry = registry_of(home)
    previous = registry.get(name)
    if previous is not None:
        if previous.source != location:
            raise LeRobotAssetsError(
                f"dataset {name!r} is already registered from {previous.source!r}; choose another --name"
            )
        url = previous.table
    else:
        # (another process may have registered this very name meanwhile: a concurrent first ingest)
        clash = [o.name for o in registry.registered() if o.name != name and asset_prefix(o.name) == asset_prefix(name)]
        if clash:
            raise LeRobotAssetsError(
                f"dataset name {name!r} and registered {clash[0]!r} are both {asset_prefix(name)!r} in Dagster; choose another --name"
            )
    entry = DatasetSource(name=name, source=location, kind=kind, table=url, revision=revision)
    registry.register(entry)
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
    """Register ``source`` and materialize its episodes: only those whose inputs differ from the
    table are decoded and written, the others are recorded as unchanged.

    Returns the JSON-able result printed by ``lerobot-assets ingest``.
    """
    home_ = Home.at(home, tables)
    settings = Settings(home_.root, tables, image_format, quality, workers)
    entry, new = register(home_, source, name, revision)
    try:
        return _ingest(settings, entry, episodes)
    except BaseException:
        if new and not _table_episodes(entry.table):  # a failed first ingest leaves nothing behind
            _forget(home_, entry.name)
        raise


def _forget(home: Home, name: str) -> None:
    """Unregister ``name`` and delete its episode partitions, pinned copies and staged frames."""
    registry_of(home).unregister(name)
    instance = dagster_instance(home)
    partitions = episode_partitions(name).name
    for key in instance.get_dynamic_partitions(partitions):
        instance.delete_dynamic_partition(partitions, key)
    shutil.rmtree(home.sources(name), ignore_errors=True)
    delete_folder(staging_folder(home.tables, name))


def _ingest(settings: Settings, entry: DatasetSource, episodes: Sequence[int] | None) -> dict[str, Any]:
    """The body of :func:`ingest` once the dataset is registered (which undoes a failed first one)."""
    home_ = Home(settings.home, settings.tables)
    instance = dagster_instance(home_)
    log.info("resolving %s (%s)", entry.source, entry.kind)
    outcome = _run(instance, settings, entry.name, "ingest_dataset")
    metadata = _materialization(instance, outcome, dataset_asset_key(entry.name, "episode_metadata"))
    fingerprints = {int(key): value for key, value in metadata["fingerprints"].items()}
    upstream = sorted(fingerprints)
    requested = upstream if episodes is None else sorted(set(episodes))
    unknown = sorted(set(requested) - set(upstream))
    if unknown:
        raise LeRobotAssetsError(
            f"dataset {entry.name!r} has no episodes {spans(unknown)} at revision {metadata['revision'][:12]} "
            f"(it has {len(upstream)} episodes: {spans(upstream)})"
        )
    if metadata["skipped"]:
        log.warning("%s: skipped episodes %s: meta/ lists them with 0 frames", entry.name, spans(metadata["skipped"]))
    plan = plan_changes(recorded_versions(entry.table), {i: fingerprints[i] for i in requested})
    log.info("%s: %d episodes to materialize, %d unchanged", entry.name, len(plan.todo), len(plan.unchanged))
    latest = instance.fetch_materializations(dataset_asset_key(entry.name, "deeplake_table"), limit=1).records
    failures = _materialize_episodes(instance, settings, entry.name, requested)
    labels = _label_reports(instance, entry.name, plan.todo, latest[0].storage_id if latest else None)
    labels["not_reapplied"] += metadata["labels_lost"]
    if labels["reapplied"] or labels["not_reapplied"]:
        log.warning("%s, re-ingested episodes: %s", entry.name, describe_reapplied(labels))
    if failures:
        head = f"{len(failures)} of {len(requested)} episodes failed"
        lines = {i: f"episode {i}: {message}" for i, message in sorted(failures.items())}
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
            asset_key=dataset_asset_key(dataset, "deeplake_table"),
            asset_partitions=[episode_key(i) for i in indices],
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


def _materialize_episodes(
    instance: DagsterInstance, settings: Settings, dataset: str, indices: Sequence[int]
) -> dict[int, str]:
    """Run the dataset's ``ingest_episodes`` job over ``indices``, in ranges of
    :data:`EPISODES_PER_RUN` episodes (each run decodes its episodes in parallel threads), with a
    progress bar; return {episode: error}.

    The episodes of a failed run that did not fail themselves were written, but Dagster records
    nothing for a failed run: they are run once more, as unchanged, so their materializations are recorded.
    """
    ordered = instance.get_dynamic_partitions(episode_partitions(dataset).name)

    def run(keys: Sequence[str]) -> dict[int, str]:
        outcome = launch_job(instance, settings, dataset, "ingest_episodes", partitions=keys)
        return {} if outcome.success else _failed_episodes(outcome.events(instance), Home(settings.home), dataset, keys)

    failures: dict[int, str] = {}
    done = 0
    with tqdm(total=len(indices), unit="episode", desc=dataset, disable=_quiet() or None) as progress:
        for batch in partition_ranges(ordered, {episode_key(i) for i in indices}, EPISODES_PER_RUN):
            failed = run(batch)
            written = set(batch) - {episode_key(i) for i in failed}
            if failed and written:
                for again in partition_ranges(ordered, written, EPISODES_PER_RUN):
                    failed.update(run(again))
            failures.update(failed)
            done += len(batch)
            progress.update(len(batch))
            log.info("%s: %d of %d episodes done", dataset, done, len(indices))
    return failures


def _failed_episodes(events: list[DagsterEvent], home: Home, dataset: str, batch: Sequence[str]) -> dict[int, str]:
    """{episode: error} of a failed ``ingest_episodes`` run: as the step reported them, or every
    episode of the run with the run's error when it failed otherwise."""
    for event in events:
        if event.is_step_failure and event.step_failure_data.user_failure_data is not None:
            failed = event.step_failure_data.user_failure_data.metadata.get("failed")
            if failed is not None:
                return {int(i): users_paths(message, home, dataset) for i, message in failed.value.items()}
    message = users_paths(failure_message(events), home, dataset)
    return {int(key): message for key in batch}


def snapshot(name: str, *, tag: str | None = None, home: str | Path | None = None, tables: str | None = None) -> dict[str, Any]:
    """Materialize ``training_snapshot`` for ``name``: tag the table's current version."""
    home_ = Home.at(home, tables)
    entry = registry_of(home_).dataset_source(name)
    op = dataset_asset_key(name, "training_snapshot").to_python_identifier()
    instance = dagster_instance(home_)
    settings = Settings(home_.root, tables)
    outcome = _run(instance, settings, name, "snapshot", run_config={"ops": {op: {"config": {"tag": tag}}}})
    values = _materialization(instance, outcome, dataset_asset_key(name, "training_snapshot"))
    return {
        "dataset": name,
        "tag": values["tag"],
        "version": values["version"],
        "table": entry.table,
        "rows": values["rows"],
        "revision": values["revision"],
    }


def info(name: str, *, home: str | Path | None = None, tables: str | None = None) -> dict[str, Any]:
    """What the table of ``name`` holds at head, with its tags and source revision."""
    entry = registry_of(Home.at(home, tables)).dataset_source(name)
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


def open_snapshot(dataset: str, tag: str, home: str | Path | None = None, tables: str | None = None):
    """The read-only Deeplake dataset of ``dataset`` at ``tag``: the exact rows a training run used."""
    return open_tag(registry_of(Home.at(home, tables)).dataset_source(dataset).table, tag)
