"""A configured deployment: with ``DAGSTER_HOME`` naming an instance with a ``QueuedRunCoordinator``
and a running ``dagster-daemon``, ``lerobot-assets ingest`` submits its runs there (the daemon
launches them) and follows them until they finish, with the same JSON as when it runs them itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from lerobot_assets.runtime.commands import ingest
from lerobot_assets.testing.synthetic import generate_dataset
from tests.support.dagster_server import REPO, server_env, stop, tail

pytestmark = pytest.mark.timeout(600)
DAEMON_START_TIMEOUT_S = 120
_INSTANCE = """storage:
  sqlite:
    base_dir: {base}
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
telemetry:
  enabled: false
"""


def test_ingest_submits_its_runs_to_the_daemon_and_follows_them(tmp_path: Path) -> None:
    source = generate_dataset(tmp_path / "src", episode_lengths=[12, 9, 14, 10], cameras=("front",), codec="libx264")
    home = tmp_path / "home"
    # registered (and episode 0 written) before the daemon's code location loads, which lists the home's datasets
    ingest(str(source), name="gen", home=home, episodes=[0], workers=1)
    deployment = tmp_path / "deployment"
    deployment.mkdir()
    (deployment / "dagster.yaml").write_text(_INSTANCE.format(base=json.dumps(str(deployment))))
    instance = DagsterInstance.from_config(str(deployment))
    assert instance.get_runs() == []  # its storage is created here, before two processes could race to create it
    env = server_env(DAGSTER_HOME=str(deployment), LEROBOT_ASSETS_HOME=str(home))
    log = tmp_path / "daemon.log"
    daemon = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while "QUEUED_RUN_COORDINATOR" not in instance.get_daemon_heartbeats():
            assert daemon.poll() is None and time.monotonic() < deadline, tail(log)
            time.sleep(1)
        cli = [sys.executable, "-m", "lerobot_assets.cli", "ingest", str(source), "--name", "gen", "--home", str(home), "-q"]
        done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:] + tail(log)
    finally:
        stop(daemon)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["added"], result["unchanged"], result["rows"]) == ([1, 2, 3], [0], 45)
    runs = instance.get_runs()
    assert sorted(run.job_name for run in runs) == ["gen__ingest_dataset", "gen__ingest_episodes"]
    for run in runs:
        assert run.status == DagsterRunStatus.SUCCESS and run.tags["launched-by"] == "lerobot-assets-cli"
        kinds = {e.dagster_event.event_type for e in instance.all_logs(run.run_id) if e.dagster_event}
        assert {DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_STARTING} <= kinds, sorted(k.value for k in kinds)  # queued, launched by the daemon
    episodes = next(run for run in runs if run.job_name == "gen__ingest_episodes")
    assert (episodes.tags["dagster/asset_partition_range_start"], episodes.tags["dagster/asset_partition_range_end"]) == ("000000", "000003")
