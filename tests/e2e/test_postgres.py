"""Dagster on PostgreSQL: the CLI records an ingest in an instance whose storage is a real
PostgreSQL server (Debian's, started on 127.0.0.1 by tests/support/pg_server.py), configured as
docs/usage.md shows (``postgres_url`` from ``$DAGSTER_POSTGRES_URL``: ``postgresql+psycopg2://...``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from lerobot_assets.testing.synthetic import generate_dataset

from tests.support.pg_server import PostgresServer, postgres_bin

pytestmark = pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed (tests/support/pg_setup.sh installs it)")


def _ingest(source: Path, home: Path, dagster_home: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "lerobot_assets.cli", "ingest", str(source), "--name", "robot", "--home", str(home),
         "--workers", "1", "-q"],
        env={**os.environ, "DAGSTER_HOME": str(dagster_home)}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_an_ingest_recorded_in_a_postgres_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = generate_dataset(tmp_path / "src", episode_lengths=(6, 7), cameras=("front",), codec="libx264")
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    with PostgresServer() as pg:
        monkeypatch.setenv("DAGSTER_POSTGRES_URL", pg.url)  # the CLI processes inherit it
        (dagster_home / "dagster.yaml").write_text("storage:\n  postgres:\n    postgres_url:\n      env: DAGSTER_POSTGRES_URL\n")
        first = _ingest(source, tmp_path / "home", dagster_home)
        assert (first["added"], first["rows"]) == ([0, 1], 13)
        again = _ingest(source, tmp_path / "home", dagster_home)
        assert (again["materialized"], again["unchanged"]) == ([], [0, 1])
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            runs = instance.get_runs()
            assert runs and all(run.tags.get("launched-by") == "lerobot-assets-cli" for run in runs)
            tables = instance.fetch_materializations(AssetKey(["robot", "deeplake_table"]), limit=10).records
            # written by the first ingest, recorded as unchanged by the second
            assert sorted(r.asset_materialization.partition for r in tables) == ["000000", "000000", "000001", "000001"]
        assert not (tmp_path / "home" / "dagster" / "dagster.yaml").exists()  # no embedded instance used
