"""A sensor that notices new upstream revisions and has every episode compared with the table.

Per dataset of the code location and per tick:

1. resolve the source's current revision (Hub: latest commit sha; local git repo: HEAD). A source
   that cannot be reached is skipped for this tick with a logged reason;
2. if ``episode_metadata`` was not yet materialized at that revision, request one run of the
   dataset's ``ingest_dataset`` job, once per revision (it pins the source, reads ``meta/``, adds
   and removes episode partitions, and deletes the rows of vanished episodes);
3. once it was, request runs of ``ingest_episodes`` over the episodes no run has recorded since
   (none, after an ``ingest`` of that revision), in ranges of
   :data:`~lerobot_assets.defs.ingest.EPISODES_PER_RUN`, once per revision. Each run rewrites only the
   episodes whose fingerprint differs from the data version the table records, and records the
   others as unchanged, so no episode stays flagged as out of sync with the new revision.

The episode runs wait for step 2 because they read the dataset's ``meta/`` as materialized by
``episode_metadata``; the cursor remembers, per dataset, which revision each step was requested for,
so ticks never flood the queue. Off by default: turn it on in the UI (``dagster dev`` runs the daemon).
"""

import json
from collections.abc import Sequence
from typing import Any

from dagster import (
    AssetRecordsFilter,
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from lerobot_assets.core.sources import SourceError, latest_revision
from lerobot_assets.defs.ingest import EPISODES_PER_RUN
from lerobot_assets.defs.partitions import dataset_asset_key, episode_partitions, job_name, partition_ranges, range_tags
from lerobot_assets.defs.resources import HubResource, StorageResource

REVISION_TAG = "lerobot_assets/revision"


def _materialized_revision(context: SensorEvaluationContext, dataset: str) -> tuple[str | None, int | None]:
    """Revision and storage id of the latest ``episode_metadata`` materialization of ``dataset``."""
    records = context.instance.fetch_materializations(dataset_asset_key(dataset, "episode_metadata"), limit=1).records
    if not records:
        return None, None
    return records[0].asset_materialization.metadata["revision"].value, records[0].storage_id


def _recorded_since(context: SensorEvaluationContext, dataset: str, storage_id: int) -> set[str]:
    """The episode partitions of ``deeplake_table`` materialized after event ``storage_id`` (their
    revision's ``episode_metadata``): compared with that revision already, by any run."""
    recorded: set[str] = set()
    cursor = None
    while True:
        page = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=dataset_asset_key(dataset, "deeplake_table"), after_storage_id=storage_id),
            limit=1000,
            cursor=cursor,
        )
        recorded.update(r.asset_materialization.partition for r in page.records)
        if not page.has_more:
            return recorded
        cursor = page.cursor


def upstream_revision_sensor(jobs: Sequence[Any]) -> SensorDefinition:
    """The sensor over the datasets whose ``ingest_dataset`` job is in ``jobs`` (``define_asset_job``'s)."""
    names = {job.name for job in jobs}

    @sensor(
        name="upstream_revision_sensor",
        # with no dataset yet, the sensor still runs, to say which registered dataset needs a reload
        **({"jobs": list(jobs)} if jobs else {"asset_selection": AssetSelection.all()}),
        default_status=DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=300,
        description="Requests runs for the episodes of each new upstream revision (Hub commit, git HEAD).",
    )
    def _sensor(context: SensorEvaluationContext, storage: StorageResource, hub: HubResource) -> SensorResult:
        cursor: dict[str, dict[str, str]] = json.loads(context.cursor) if context.cursor else {}
        run_requests: list[RunRequest] = []
        skipped: list[str] = []
        for source in storage.registry.registered():
            if job_name(source.name, "ingest_dataset") not in names:
                context.log.info(f"{source.name}: registered after this code location loaded; reload it to watch the dataset")
                continue
            state = cursor.setdefault(source.name, {})
            try:
                revision = latest_revision(source, hub.settings(), storage.home.sources(source.name))
            except SourceError as exc:
                context.log.warning(f"skipping {source.name} this tick: {exc}")
                skipped.append(source.name)
                continue
            materialized, storage_id = _materialized_revision(context, source.name)
            if materialized != revision:
                if state.get("metadata_requested") != revision:
                    context.log.info(f"{source.name}: new revision {revision[:12]}; requesting its metadata")
                    run_requests.append(
                        RunRequest(
                            run_key=f"{source.name}:{revision}:metadata",
                            job_name=job_name(source.name, "ingest_dataset"),
                            tags={REVISION_TAG: revision},
                        )
                    )
                    state["metadata_requested"] = revision
                continue
            if state.get("episodes_requested") == revision:
                continue
            keys = context.instance.get_dynamic_partitions(episode_partitions(source.name).name)
            todo = set(keys) - _recorded_since(context, source.name, storage_id)
            ranges = partition_ranges(keys, todo, EPISODES_PER_RUN)
            context.log.info(f"{source.name} at {revision[:12]}: {len(todo)} episodes to compare in {len(ranges)} runs")
            run_requests.extend(
                RunRequest(
                    run_key=f"{source.name}:{revision}:{batch[0]}-{batch[-1]}",
                    job_name=job_name(source.name, "ingest_episodes"),
                    tags={REVISION_TAG: revision, **range_tags(batch)},
                )
                for batch in ranges
            )
            state["episodes_requested"] = revision
        return SensorResult(
            run_requests=run_requests,
            cursor=json.dumps(cursor, sort_keys=True),
            skip_reason=None if run_requests else f"no new revisions{f' (unreachable: {skipped})' if skipped else ''}",
        )

    return _sensor
