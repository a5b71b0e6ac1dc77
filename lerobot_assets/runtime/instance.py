"""The Dagster instance runs are recorded in: ``$DAGSTER_HOME``'s when it is set (a deployment's),
else the home's embedded one (SQLite), opened once per process; runs of CLI processes that
died without finishing them are marked failed when it opens.
"""

import json
import logging
import os
import socket
import threading
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from filelock import FileLock

from lerobot_assets.runtime.home import Home

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
