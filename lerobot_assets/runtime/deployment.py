"""Submitting runs to a configured Dagster deployment, and following them until they finish.

With ``$DAGSTER_HOME`` naming a deployment, one whose runs are launched elsewhere (any run launcher
but the default) or queued for a running ``dagster-daemon`` (``QueuedRunCoordinator``, Dagster's
default, with a recent daemon heartbeat), the CLI does not execute runs itself: it submits them
with ``dagster job launch`` (Dagster's own command: it loads the code location, creates the run with
its origin and hands it to the instance's run coordinator), so the deployment's daemon, concurrency
limits and launcher decide where and when they run; then it polls the instance. An instance with
no daemon running and the default launcher only records runs: the CLI executes them itself.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, DagsterRunStatus, DefaultRunLauncher, QueuedRunCoordinator

from lerobot_assets.core.errors import LeRobotAssetsError

#: The code location as ``workspace.yaml`` names it: a daemon finds the job of a submitted run by it.
LOCATION_NAME = "lerobot_assets"
_WORKSPACE = f"""load_from:
  - python_module:
      module_name: lerobot_assets.definitions
      location_name: {LOCATION_NAME}
"""
_FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
#: How often a followed run's status is read from the instance.
POLL_S = 0.5


#: A daemon whose last heartbeat is older than this is not running (it beats every ~30 s).
DAEMON_HEARTBEAT_S = 120


def submits(instance: DagsterInstance) -> bool:
    """Whether runs on the configured ``instance`` go through its deployment (see the module's docstring)."""
    if not isinstance(instance.run_launcher, DefaultRunLauncher):
        return True
    if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        return False
    beats = instance.get_daemon_heartbeats().values()
    return any(beat.daemon_type == "QUEUED_RUN_COORDINATOR" and time.time() - beat.timestamp < DAEMON_HEARTBEAT_S for beat in beats)


def submit_job(home: Path, job: str, run_config: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """Submit a run of ``job`` to the ``$DAGSTER_HOME`` instance's run coordinator; return its run id."""
    run_id = str(uuid.uuid4())
    with tempfile.TemporaryDirectory(prefix="lerobot-assets-") as tmp:
        workspace = Path(tmp) / "workspace.yaml"
        workspace.write_text(_WORKSPACE)
        command = [
            sys.executable, "-m", "dagster", "job", "launch", "-w", str(workspace), "-j", job, "--run-id", run_id,
            "--tags", json.dumps(dict(tags)), "--config-json", json.dumps(dict(run_config)),
        ]
        # the code location lists the datasets of this home, so the job of a dataset just registered exists
        env = {**os.environ, "LEROBOT_ASSETS_HOME": str(home)}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise LeRobotAssetsError(f"could not submit a run of {job} to the Dagster deployment: {lines[-1] if lines else done.returncode}")
    return run_id


def wait_for(instance: DagsterInstance, run_id: str) -> DagsterRunStatus:
    """Block until the run has finished (whoever executes it) and return its status."""
    while True:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status in _FINISHED:
            return run.status
        time.sleep(POLL_S)
