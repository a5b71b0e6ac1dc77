"""Materializing the asset graph from Python and the CLI, through a persistent Dagster instance.

Runs launched here are recorded in ``$DAGSTER_HOME``'s instance when set, else in ``<home>/dagster``
(Dagster's default SQLite storage), so they show up in ``lerobot-assets ui`` / ``dagster dev``,
under the dataset's named jobs. ``ingest`` runs the dataset's ``ingest_dataset`` job once, then
its ``ingest_episodes`` job over ranges of episodes, the same runs a backfill from the UI makes.
"""

# First, before any library that brings its own mimalloc loads (see lerobot_assets.core.allocator).
import lerobot_assets.core.allocator  # noqa: F401, I001

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dagster import AssetRecordsFilter, DagsterEvent, DagsterInstance
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
    episode_index,
    episode_key,
    episode_partitions,
    partition_ranges,
)
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.instance import dagster_instance
from lerobot_assets.runtime.registry import registry_of
from lerobot_assets.runtime.runner import (
    Settings,
    failure_message,
    launch_job,
    materialization_values,
    quiet,
    run_or_raise,
    users_paths,
)

log = logging.getLogger(__name__)


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
    outcome = run_or_raise(instance, settings, entry.name, "ingest_dataset")
    metadata = materialization_values(instance, outcome, dataset_asset_key(entry.name, "episode_metadata"))
    fingerprints = {episode_index(key): value for key, value in metadata["fingerprints"].items()}
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
    with tqdm(total=len(indices), unit="episode", desc=dataset, disable=quiet() or None) as progress:
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
    return {episode_index(key): message for key in batch}


def snapshot(name: str, *, tag: str | None = None, home: str | Path | None = None, tables: str | None = None) -> dict[str, Any]:
    """Materialize ``training_snapshot`` for ``name``: tag the table's current version."""
    home_ = Home.at(home, tables)
    entry = registry_of(home_).dataset_source(name)
    op = dataset_asset_key(name, "training_snapshot").to_python_identifier()
    instance = dagster_instance(home_)
    settings = Settings(home_.root, tables)
    outcome = run_or_raise(instance, settings, name, "snapshot", run_config={"ops": {op: {"config": {"tag": tag}}}})
    values = materialization_values(instance, outcome, dataset_asset_key(name, "training_snapshot"))
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
