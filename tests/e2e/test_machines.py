"""Two "machines" writing one table: processes with their own homes (nothing local shared), each with
its own Dagster instance or both on one PostgreSQL instance (as a team's would be), ingesting
overlapping episodes into the same ``s3://`` tables root on a real S3-compatible server (moto on
127.0.0.1) at the same time. The table's write lease serializes them: the result equals a serial
ingest row for row, with no (episode, frame) twice. Each trial starts with the test holding the
lease until both machines wait for it at their first write (creating the table), so they contend
every time; then they run free.

``LEROBOT_ASSETS_TRIALS`` sets how many times the race is run: by default 5 times on one PostgreSQL
instance (a team's setup), 2 with each machine on its own instance.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import deeplake
import numpy as np
import pytest
from dagster import AssetRecordsFilter, DagsterInstance, build_sensor_context

from lerobot_assets.core.table.access import open_read_only, open_writable
from lerobot_assets.core.table.lease import hold
from lerobot_assets.defs.partitions import dataset_asset_key, episode_key
from lerobot_assets.runtime.commands import info, ingest, snapshot
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.instance import dagster_instance
from lerobot_assets.runtime.runner import Settings, code_location, run_job
from lerobot_assets.testing.synthetic import generate_dataset
from lerobot_assets.training import SnapshotDataset

from tests.support.pg_server import PostgresServer, postgres_bin
from tests.support.s3_server import S3Server
from tests.e2e.test_faults import _KILLABLE_INGEST, _rows, _wait_for
from tests.unit.test_lease import _s3_object
from tests.defs.test_relabel import episode_copy

LENGTHS = (40, 44, 38, 42, 40, 36)
#: Episodes each machine ingests: both start at once and write 1-5 at about the same time.
RANGES = {"A": ("0-5", [0, 1, 2, 3, 4, 5]), "B": ("1-5", [1, 2, 3, 4, 5])}
TRIALS = os.environ.get("LEROBOT_ASSETS_TRIALS")
POINTER = "dagster/input_event_pointer"  # Dagster's tag prefix: which materialization an input was


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("machines") / "src", episode_lengths=LENGTHS, cameras=("front", "wrist"),
                            codec="libx264", episodes_per_file=2)


@pytest.fixture(scope="module")
def serial(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The rows of a serial ingest of every episode, by one process into a local table."""
    return _rows(ingest(str(source), name="robot", home=tmp_path_factory.mktemp("serial"), workers=1)["table"])


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def _machine(source: Path, home: Path, tables: str, episodes: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``lerobot-assets ingest`` in a process of its own, as on another machine: its own home."""
    command = [sys.executable, "-m", "lerobot_assets.cli", "ingest", str(source), "--name", "robot", "--home", str(home),
               "--tables", tables, "--episodes", episodes, "--workers", "1"]
    with (home.parent / f"{home.name}.log").open("w") as log:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **(env or {})})


def _log(home: Path) -> str:
    return (home.parent / f"{home.name}.log").read_text()


def _until_both_wait(machines: list[subprocess.Popen], homes: list[Path]) -> None:
    """Return once both machines log that they wait for the write lease (or one has exited: the
    code before the lease never waits)."""
    deadline = time.monotonic() + 300
    while not all("waiting for the write lease" in _log(home) for home in homes):
        if any(machine.poll() is not None for machine in machines) or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _foreign_inputs(instance: DagsterInstance) -> int:
    """Materializations of robot's ``deeplake_table`` whose recorded ``telemetry_frame`` input (Dagster's
    input event pointer) is a materialization of another run: another machine's, recorded between
    this run's events (wrong lineage, spurious STALE flags). A run of several episodes records one
    pointer for all of them (Dagster's lineage is per run), a run of one its own partition's."""
    table, telemetry = dataset_asset_key("robot", "deeplake_table"), dataset_asset_key("robot", "telemetry_frame")
    tag = f"{POINTER}/{telemetry.to_user_string()}"
    records = [r for r in instance.fetch_materializations(table, limit=10_000).records if tag in (r.asset_materialization.tags or {})]
    assert records, "no input pointers recorded"
    pointers = [int(r.asset_materialization.tags[tag]) for r in records]
    inputs = instance.fetch_materializations(AssetRecordsFilter(telemetry, storage_ids=pointers), limit=10_000).records
    run_of = {record.storage_id: record.run_id for record in inputs}
    return sum(run_of.get(pointer) != record.run_id for record, pointer in zip(records, pointers))


def _duplicates(url: str) -> int:
    ds = open_read_only(url)
    pairs = np.stack([np.asarray(ds["episode_index"][:]), np.asarray(ds["frame_index"][:])], axis=1)
    return len(pairs) - len(np.unique(pairs, axis=0))


@pytest.fixture(params=["own instances", "one PostgreSQL instance"])
def instance(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of both machines: each its home's Dagster instance, or one ``DAGSTER_HOME`` on PostgreSQL."""
    if request.param == "own instances":
        yield {}
        return
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (tests/support/pg_setup.sh installs it)")
    with PostgresServer() as pg:
        dagster_home = tmp_path / "dagster"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text(f"storage:\n  postgres:\n    postgres_url: {json.dumps(pg.url)}\n")
        yield {"DAGSTER_HOME": str(dagster_home)}


def _instances(env: dict[str, str], homes: list[Path]) -> list[DagsterInstance]:
    """The Dagster instances the machines recorded their runs in."""
    if "DAGSTER_HOME" in env:
        return [DagsterInstance.from_config(env["DAGSTER_HOME"])]
    return [DagsterInstance.from_config(str(home / "dagster")) for home in homes]


def test_two_machines_ingesting_overlapping_episodes_equal_a_serial_ingest(
    source: Path, serial: dict[str, np.ndarray], s3: S3Server, instance: dict[str, str], tmp_path: Path
) -> None:
    outcomes = []
    trials = int(TRIALS or (5 if "DAGSTER_HOME" in instance else 2))
    for trial in range(trials):
        tables = f"s3://{s3.bucket}/{tmp_path.name}-trial{trial}"
        url = f"{tables}/robot"
        homes = [tmp_path / f"trial{trial}-{machine}" for machine in RANGES]
        with hold(url):  # both machines reach their first write (creating the table) and wait for this
            machines = [_machine(source, home, tables, episodes, instance) for home, (episodes, _) in zip(homes, RANGES.values())]
            _until_both_wait(machines, homes)
        codes = [machine.wait(timeout=600) for machine in machines]
        # what each found in the table when done (what it materialized depends on who was first)
        held = [json.loads(machine.stdout.read().splitlines()[-1])["episodes"] if code == 0 else None
                for machine, code in zip(machines, codes)]
        rows = _rows(url)
        outcomes.append({
            "trial": trial, "exit codes": codes,
            "covered": [h is not None and set(episodes) <= set(h) for h, (_, episodes) in zip(held, RANGES.values())],
            "rows": len(rows["index"]), "duplicates": _duplicates(url),
            "waited for the test": [f"held by pid {os.getpid()} on host" in _log(home) for home in homes],
            "differ": [name for name in serial if name not in rows or not np.array_equal(rows[name], serial[name])],
            "foreign inputs": sum(_foreign_inputs(recorded) for recorded in _instances(instance, homes)),
        })
        if codes != [0, 0]:
            print(f"trial {trial}:", *[_log(home)[-2000:] for home in homes], sep="\n")
    print(outcomes)
    expected = {"exit codes": [0, 0], "covered": [True, True], "waited for the test": [True, True], "rows": sum(LENGTHS),
                "duplicates": 0, "differ": [], "foreign inputs": 0}
    assert [{key: outcome[key] for key in expected} for outcome in outcomes] == [expected] * trials, outcomes


def test_a_table_whose_creation_was_not_committed_is_completed(source: Path, serial: dict[str, np.ndarray],
                                                               tmp_path: Path) -> None:
    """A writer died between creating the table and committing its columns: the next ingest completes it."""
    tables = tmp_path / "tables"
    deeplake.create(str(tables / "robot"))
    result = ingest(str(source), name="robot", home=tmp_path / "home", tables=str(tables), workers=1)
    rows = _rows(result["table"])
    for name in serial:
        assert np.array_equal(rows[name], serial[name]), name


def test_a_machine_killed_mid_write_leaves_its_lease_to_the_next(source: Path, serial: dict[str, np.ndarray],
                                                                  s3: S3Server, tmp_path: Path) -> None:
    """Machine A dies holding the lease (SIGKILL at its first episode's commit): machine B, with another
    home, takes the lease over at once (its holder is a dead process of this host; from another host,
    after the lease's time to live) and its ingest leaves the table exact."""
    tables = f"s3://{s3.bucket}/killed"
    marker = tmp_path / "at-commit"
    with (tmp_path / "A.log").open("w") as log:
        a = subprocess.Popen([sys.executable, "-c", _KILLABLE_INGEST, str(source), str(tmp_path / "A"), str(marker), tables],
                             stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        _wait_for(marker, a)
    finally:
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(timeout=30)
    client, bucket, key = _s3_object(f"{tables}/robot")
    assert json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())["pid"] == a.pid  # left behind
    b = _machine(source, tmp_path / "B", tables, "0-5")
    assert b.wait(timeout=600) == 0, _log(tmp_path / "B")[-3000:]
    assert f"took over the write lease of {tables}/robot from pid {a.pid}" in _log(tmp_path / "B")
    rows = _rows(f"{tables}/robot")
    for name in serial:
        assert np.array_equal(rows[name], serial[name]), name


def test_an_episode_written_twice_is_repaired_by_the_next_ingest(source: Path, serial: dict[str, np.ndarray],
                                                                 tmp_path: Path) -> None:
    """What two writers without the lease left (episodes 2 and 3 twice, their data versions current):
    the next ingest finds their rows wrong instead of unchanged and rewrites them, one copy each
    (it used to fail every run of the dataset: rows not contiguous)."""
    home = tmp_path / "home"
    url = ingest(str(source), name="robot", home=home, workers=1)["table"]
    ds = open_writable(url)
    for index in (2, 3):
        ds.append(episode_copy(ds, index))
    ds.commit("episodes 2 and 3 again, as unleased writers left them")
    assert _duplicates(url) == LENGTHS[2] + LENGTHS[3]
    ingest(str(source), name="robot", home=home, workers=1)
    assert _duplicates(url) == 0
    rows = _rows(url)
    for name in serial:
        assert np.array_equal(rows[name], serial[name]), name


def test_machines_with_empty_homes_work_by_dataset_name(
    source: Path, serial: dict[str, np.ndarray], s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Machine A ingests episodes 0-2 into an s3:// tables root, recording on a shared PostgreSQL
    instance, and its home is then deleted. Machines B and C start with empty homes and know only the
    dataset's name, the tables root and the instance: B runs the episode job for 3-5 (the asset values
    and registry come from beside the tables; it pins the source itself), C reads ``info``, tags a
    snapshot, trains on it with ``SnapshotDataset`` and ticks the sensor, which finds the dataset and
    nothing to request."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (tests/support/pg_setup.sh installs it)")
    tables = f"s3://{s3.bucket}/empty-homes"
    with PostgresServer() as pg:
        dagster_home = tmp_path / "dagster"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text(f"storage:\n  postgres:\n    postgres_url: {json.dumps(pg.url)}\n")
        a = _machine(source, tmp_path / "A", tables, "0-2", {"DAGSTER_HOME": str(dagster_home)})
        assert a.wait(timeout=600) == 0, _log(tmp_path / "A")[-3000:]
        shutil.rmtree(tmp_path / "A")
        monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
        monkeypatch.setenv("LEROBOT_ASSETS_TABLES", tables)

        b = Settings(tmp_path / "B")
        instance = dagster_instance(Home(b.home))
        result = run_job(instance, b, "robot", "ingest_episodes", partitions=[episode_key(i) for i in (3, 4, 5)])
        assert result.success
        assert sorted((tmp_path / "B").iterdir()) == [tmp_path / "B" / "sources"]  # its pinned copy, nothing else

        c = tmp_path / "C"
        assert info("robot", home=c)["episodes"] == list(range(len(LENGTHS)))
        rows = _rows(f"{tables}/robot")
        for name in serial:
            assert np.array_equal(rows[name], serial[name]), name
        tag = snapshot("robot", tag="from-c", home=c)["tag"]
        frames = SnapshotDataset("robot", tag, home=c)
        assert len(frames) == sum(LENGTHS)
        assert int(frames[LENGTHS[0]]["episode_index"]) == 1 and int(frames[LENGTHS[0]]["frame_index"]) == 0

        sensor = code_location(Settings(c)).resolve_sensor_def("upstream_revision_sensor")
        tick = sensor(build_sensor_context(instance=instance, resources=Settings(c).resources()))
        assert tick.run_requests == []
        assert json.loads(tick.cursor)["robot"]["episodes_requested"] == info("robot", home=c)["revision"]
        assert _foreign_inputs(instance) == 0
