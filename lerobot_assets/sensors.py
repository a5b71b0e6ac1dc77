"""A sensor that notices new upstream revisions and requests only what they changed.

Per registered dataset and per tick:

1. resolve the source's current revision (Hub: latest commit sha; local git repo: HEAD). A source
   that cannot be reached is skipped for this tick with a logged reason;
2. if ``episode_metadata`` was not yet materialized at that revision, request one run of the
   dataset-level assets (``hf_snapshot``, ``episode_metadata``), once per revision;
3. once it was, request one run per episode partition whose fingerprint differs from the data
   version the table records for it, once per revision (the metadata run removed vanished episodes).

The episode runs wait for step 2 because they read the dataset's ``meta/`` as materialized by
``episode_metadata``; the cursor remembers, per dataset, which revision each step was requested for,
so ticks never flood the queue. Off by default: turn it on in the UI (``dagster dev`` runs the daemon).
"""

import json

from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from lerobot_assets.assets import ALL_ASSETS, DATASET_ASSETS, EPISODE_ASSETS
from lerobot_assets.partitions import episode_dimension, episode_key, episode_partition
from lerobot_assets.resources import HubResource, StorageResource
from lerobot_assets.source import SourceError, latest_revision
from lerobot_assets.versions import plan_changes, recorded_versions

REVISION_TAG = "lerobot_assets/revision"


def _materialized_metadata(context: SensorEvaluationContext, dataset: str) -> tuple[str | None, dict[int, str]]:
    """Revision and episode fingerprints of the latest ``episode_metadata`` materialization of ``dataset``."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("episode_metadata"), asset_partitions=[dataset]), limit=1
    ).records
    if not records:
        return None, {}
    metadata = records[0].asset_materialization.metadata
    return metadata["revision"].value, {int(k): v for k, v in metadata["fingerprints"].value.items()}


@sensor(
    name="upstream_revision_sensor",
    asset_selection=AssetSelection.assets(*ALL_ASSETS),
    default_status=DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=300,
    description="Requests runs for the episodes a new upstream revision (Hub commit, git HEAD) changed.",
)
def upstream_revision_sensor(
    context: SensorEvaluationContext, storage: StorageResource, hub: HubResource
) -> SensorResult:
    cursor: dict[str, dict[str, str]] = json.loads(context.cursor) if context.cursor else {}
    run_requests: list[RunRequest] = []
    new_episode_keys: set[str] = set()
    skipped: list[str] = []
    for source in storage.home.registered():
        state = cursor.setdefault(source.name, {})
        try:
            revision = latest_revision(source, hub.settings(), storage.home.sources(source.name))
        except SourceError as exc:
            context.log.warning(f"skipping {source.name} this tick: {exc}")
            skipped.append(source.name)
            continue
        materialized_revision, fingerprints = _materialized_metadata(context, source.name)
        if materialized_revision != revision:
            if state.get("metadata_requested") != revision:
                context.log.info(f"{source.name}: new revision {revision[:12]}; requesting its metadata")
                run_requests.append(
                    RunRequest(
                        run_key=f"{source.name}:{revision}:metadata",
                        asset_selection=[a.key for a in DATASET_ASSETS],
                        partition_key=source.name,
                        tags={REVISION_TAG: revision},
                    )
                )
                state["metadata_requested"] = revision
            continue
        if state.get("episodes_requested") == revision:
            continue
        plan = plan_changes(recorded_versions(source.table), fingerprints)
        context.log.info(
            f"{source.name} at {revision[:12]}: {len(plan.added)} added, {len(plan.changed)} changed, "
            f"{len(plan.unchanged)} unchanged episodes"
        )
        existing = set(context.instance.get_dynamic_partitions(episode_dimension.name))
        new_episode_keys.update(episode_key(i) for i in plan.todo if episode_key(i) not in existing)
        run_requests.extend(
            RunRequest(
                run_key=f"{source.name}:{revision}:{episode_key(index)}",
                asset_selection=[key for a in EPISODE_ASSETS for key in a.keys],
                partition_key=str(episode_partition(source.name, index)),
                tags={REVISION_TAG: revision},
            )
            for index in plan.todo
        )
        state["episodes_requested"] = revision
    return SensorResult(
        run_requests=run_requests,
        cursor=json.dumps(cursor, sort_keys=True),
        dynamic_partitions_requests=(
            [AddDynamicPartitionsRequest(episode_dimension.name, sorted(new_episode_keys))] if new_episode_keys else []
        ),
        skip_reason=None if run_requests else f"no new revisions{f' (unreachable: {skipped})' if skipped else ''}",
    )
