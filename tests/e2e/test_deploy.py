"""The example ``deploy/`` folder as a team would use it, against a real PostgreSQL server on
127.0.0.1 (tests/support/pg_server.py): ``deploy/dagster.yaml`` loaded as is, its settings in effect; the code
location served by the Dockerfile's own command; ``dagster dev`` (webserver + daemon) on
``deploy/workspace.yaml``; the daemon's backfill of every episode completes, and the same backfill
again writes nothing. Docker itself is not used (the image is not built here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, QueuedRunCoordinator, RunsFilter

from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.defs.partitions import episode_pool
from lerobot_assets.runtime.deployment import LOCATION_NAME
from lerobot_assets.testing.synthetic import generate_dataset

from tests.support.dagster_server import (
    REPO, dagster_command, free_port, graphql, serve, server_env, stop, tail, wait_for_port,
)
from tests.support.pg_server import PostgresServer, postgres_bin

pytestmark = [
    pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed (tests/support/pg_setup.sh installs it)"),
    pytest.mark.timeout(600),
]
DEPLOY = REPO / "deploy"
BACKFILL_TIMEOUT_S = 240
CODE_SERVER_START_TIMEOUT_S = 120
EPISODE_ASSETS = ("telemetry_frame", "decoded_camera_frames", "deeplake_table")
_LAUNCH = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } ... on InvalidSubsetError { message } } }"""
_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }"""


@contextmanager
def _deploy_instance(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A PostgreSQL server and a DAGSTER_HOME holding deploy/dagster.yaml unchanged; yields the
    environment variables the file reads."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", dagster_home / "dagster.yaml")
    with PostgresServer() as pg:
        yield {"DAGSTER_HOME": str(dagster_home), "DAGSTER_POSTGRES_URL": pg.url, "DAGSTER_COMPUTE_LOGS_DIR": str(tmp_path / "compute_logs")}


def test_deploy_dagster_yaml_on_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _deploy_instance(tmp_path) as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with DagsterInstance.get() as instance:
            assert (type(instance.run_storage).__name__, type(instance.event_log_storage).__name__) == ("PostgresRunStorage", "PostgresEventLogStorage")
            assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
            config = instance.get_concurrency_config()
            assert config.run_queue_config.max_concurrent_runs == 4
            assert config.run_queue_config.tag_concurrency_limits == [
                {"key": "dagster/backfill", "value": {"applyLimitPerUniqueValue": True}, "limit": 2}
            ]
            assert (config.pool_config.default_pool_limit, config.pool_config.pool_granularity.value) == (1, "op")
            assert instance.run_monitoring_enabled
            assert type(instance.compute_log_manager).__name__ == "LocalComputeLogManager"


def _code_server_command(port: int) -> list[str]:
    """deploy/Dockerfile's CMD, on a free port of 127.0.0.1 instead of 0.0.0.0:4000."""
    cmd = next(line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    argv = json.loads(cmd[len("CMD "):])
    assert argv[:3] == ["dagster", "code-server", "start"] and argv[argv.index("--location-name") + 1] == LOCATION_NAME
    argv[argv.index("-h") + 1], argv[argv.index("-p") + 1] = "127.0.0.1", str(port)
    return [*dagster_command(), *argv[1:]]


def test_dockerfile_copies_what_exists() -> None:
    """Each COPY source of deploy/Dockerfile exists in the repository (its build context)."""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), line


@contextmanager
def _code_server(env: dict[str, str], log: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(_code_server_command(port), cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        try:
            wait_for_port(port, proc, CODE_SERVER_START_TIMEOUT_S, "the code server")
        except RuntimeError as exc:
            raise AssertionError(f"{exc}\n{tail(log)}") from None
        yield port
    finally:
        stop(proc)


def _backfill(base: str, dataset: str) -> str:
    """Launch a backfill of every episode partition of ``dataset`` as the UI does; wait until the daemon finished it."""
    params = {"partitionsByAssets": [{"assetKey": {"path": [dataset, key]}} for key in EPISODE_ASSETS], "title": "all episodes"}
    launched = graphql(base, _LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    deadline = time.monotonic() + BACKFILL_TIMEOUT_S
    while time.monotonic() < deadline:
        status = graphql(base, _STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]["status"]
        if status not in ("REQUESTED", "CANCELING", "FAILING"):
            assert status in ("COMPLETED", "COMPLETED_SUCCESS"), status
            return launched["backfillId"]
        time.sleep(1)
    pytest.fail(f"backfill not finished after {BACKFILL_TIMEOUT_S} s")


def test_daemon_backfill_on_postgres_then_an_unchanged_rerun_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lengths = [8, 6, 9, 7, 5]
    source = generate_dataset(tmp_path / "src", episode_lengths=lengths, cameras=("front",), codec="libx264")
    home = tmp_path / "home"
    with _deploy_instance(tmp_path) as deploy_env:
        env = server_env(**deploy_env, LEROBOT_ASSETS_HOME=str(home))
        # registers the dataset and materializes its dataset-level assets; no daemon yet, so the CLI runs it itself
        cli = [sys.executable, "-m", "lerobot_assets.cli", "ingest", str(source), "--name", "gen", "--home", str(home),
               "--episodes", "0", "--workers", "1", "-q"]
        done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        first = json.loads(done.stdout.splitlines()[-1])
        with _code_server(env, tmp_path / "code-server.log") as port:
            web_port = free_port()
            command = [*dagster_command(), "dev", "-w", str(DEPLOY / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(web_port)]
            dev_env = {**env, "LEROBOT_ASSETS_CODE_HOST": "127.0.0.1", "LEROBOT_ASSETS_CODE_PORT": str(port)}
            with serve(command, f"http://127.0.0.1:{web_port}", tmp_path, dev_env, tmp_path / "dagster-dev.log") as base:
                full_id = _backfill(base, "gen")
                written = open_read_only(first["table"])
                again_id = _backfill(base, "gen")
        unchanged = open_read_only(first["table"])
        for key, value in deploy_env.items():
            monkeypatch.setenv(key, value)
        with DagsterInstance.get() as instance:
            for backfill_id in (full_id, again_id):
                runs = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
                assert [run.status for run in runs] == [DagsterRunStatus.SUCCESS]  # 5 episodes: one run
            records = instance.fetch_materializations(AssetKey(["gen", "deeplake_table"]), limit=100).records
            slots = instance.event_log_storage.get_concurrency_info(episode_pool("gen")).slot_count
    assert len(written) == sum(lengths) and written.version != first["version"]
    assert unchanged.version == written.version  # the re-run wrote nothing
    latest: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: r.storage_id):
        latest[record.asset_materialization.partition] = record.asset_materialization.metadata
    assert sorted(latest) == [f"{i:06d}" for i in range(len(lengths))]
    assert all(metadata["unchanged"].value is True for metadata in latest.values()), latest
    assert slots == 1  # the dataset's pool got deploy/dagster.yaml's default limit
    assert any((tmp_path / "compute_logs").rglob("*.err"))  # the steps' stderr, where DAGSTER_COMPUTE_LOGS_DIR says
