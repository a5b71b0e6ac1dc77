"""Running a dataset's named jobs: in this process, or submitted to a deployment's daemon and
followed to the end, with the resources of a home's settings; a failed run becomes one line naming
the user's files, not our pinned copies of them.
"""

import functools
import logging
import os
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    ExecuteInProcessResult,
)

from lerobot_assets.core.errors import LeRobotAssetsError
from lerobot_assets.defs.partitions import job_name, range_tags
from lerobot_assets.defs.resources import HubResource, ImageEncodingResource, StorageResource, TablesIOManager
from lerobot_assets.runtime.deployment import submit_job, submits, wait_for
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.instance import LAUNCHED_BY, LAUNCHED_BY_TAG, PROCESS_TAG
from lerobot_assets.runtime.registry import registry_of

log = logging.getLogger(__name__)


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
    # imported here: importing the code location builds the definitions of the default home
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
        run_config={**(_QUIET_LOGGING if quiet() else _LOGGING), **(run_config or {})},
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


def quiet() -> bool:
    return logging.getLogger("lerobot_assets").level > logging.INFO


def run_or_raise(instance: DagsterInstance, settings: Settings, dataset: str, use: str, **kwargs: Any) -> Outcome:
    outcome = launch_job(instance, settings, dataset, use, **kwargs)
    if not outcome.success:
        raise LeRobotAssetsError(users_paths(failure_message(outcome.events(instance)), Home(settings.home), dataset))
    return outcome


def materialization_values(instance: DagsterInstance, outcome: Outcome, key: AssetKey) -> dict[str, Any]:
    """The metadata values of the materialization of ``key`` that the run ``outcome`` recorded."""
    for event in outcome.events(instance, DagsterEventType.ASSET_MATERIALIZATION):
        materialization = event.event_specific_data.materialization
        if materialization.asset_key == key:
            return {name: value.value for name, value in materialization.metadata.items()}
    raise LeRobotAssetsError(f"run {outcome.run_id} recorded no materialization of {key.to_user_string()}")


def users_paths(message: str, home: Home, name: str) -> str:
    """``message`` with each path inside the dataset's pinned copies (``<home>/sources/<name>/<revision>``,
    or the Hub's cached copy there) replaced by the source the user gave: the user's file, not our copy of it."""
    entry = registry_of(home).get(name)
    if entry is None:
        return message
    source = entry.source
    pins = home.sources(name)
    spellings = sorted({str(pins), str(pins.absolute()), str(pins.resolve())}, key=len, reverse=True)
    roots = "|".join(re.escape(p) for p in spellings)
    return re.sub(rf"(?:{roots})/(?:hf_cache/[^/]+/snapshots/)?[^/\s'\"]+", lambda _: source, message)
