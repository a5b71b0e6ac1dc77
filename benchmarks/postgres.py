"""Episode runs with Dagster's storage on PostgreSQL against the same runs on SQLite (issue 16).

The same synthetic dataset (many short episodes, one small camera: the shape where Dagster's
per-episode cost weighs most) is ingested by the CLI (``lerobot-assets ingest``, runs of up to 50
episodes) into a fresh home with ``DAGSTER_HOME`` naming, in turn:

- sqlite:           ``storage: sqlite:`` (what the embedded instance uses);
- postgres:         ``storage: postgres: postgres_url: postgresql+psycopg2://...`` on a PostgreSQL
                    server on 127.0.0.1 (tests/support/pg_server.py: Debian's binaries, a fresh cluster,
                    here with ``fsync`` on, as a real server has it);
- postgres_batched: the same, with ``DAGSTER_EVENT_BATCH_SIZE`` set (Dagster's environment variable
                    that stores the per-partition materializations of a step's output in batches);
- postgres_batched_unix: the same over the server's Unix socket instead of TCP on 127.0.0.1
                    (``postgresql+psycopg2://USER@/DB?host=/socket/dir``: a server on the same machine);
- pgbouncer_batched: batched, through PgBouncer (Debian's ``pgbouncer``, transaction pooling) on
                    127.0.0.1: dagster-postgres opens a connection per statement (``NullPool``), and
                    a pooler makes that cheap without changing Dagster.

then ingested again unchanged (every episode recorded as unchanged: Dagster's cost alone). Each
variant has its own database; with ``--rounds N`` the variants alternate N times and each ratio is
taken against the SQLite run of its own round (minutes apart, not hours, on a shared machine). Reported per variant: the seconds of the ``<name>__ingest_episodes``
runs (start to end, from the instance) and of the whole CLI command, and for PostgreSQL the
server sessions opened and transactions committed (``pg_stat_database``; through PgBouncer its
pooled sessions are reused, and their statistics reach the counters late, so both read low). Ratios are against sqlite in the same run; the last line is JSON.

    .venv/bin/python benchmarks/postgres.py --rounds 2       # 150 episodes of 20-40 frames
    .venv/bin/python benchmarks/postgres.py --episodes 60 --variants sqlite,postgres

Goal (issue 16): episode runs on PostgreSQL within 1.3x their cost on SQLite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import psycopg2
from dagster import DagsterInstance, RunsFilter

from lerobot_assets.testing.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.dagster_server import free_port, wait_for_port  # noqa: E402
from tests.support.pg_server import PostgresServer  # noqa: E402

NAME = "bench"
#: Variant -> (storage kind, extra environment of the CLI process, connect over the Unix socket).
VARIANTS = {
    "sqlite": ("sqlite", {}, False),
    "postgres": ("postgres", {}, False),
    "postgres_batched": ("postgres", {"DAGSTER_EVENT_BATCH_SIZE": "200"}, False),
    "postgres_batched_unix": ("postgres", {"DAGSTER_EVENT_BATCH_SIZE": "200"}, True),
    "pgbouncer_batched": ("pgbouncer", {"DAGSTER_EVENT_BATCH_SIZE": "200"}, False),
}


@contextmanager
def pgbouncer(pg: PostgresServer) -> Iterator[int]:
    """PgBouncer (Debian's ``pgbouncer``) on a free 127.0.0.1 port in front of ``pg``, transaction
    pooling; yields its port and stops it by its PID."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).is_file():
        raise SystemExit("pgbouncer is not installed (apt-get install pgbouncer); or leave pgbouncer_batched out of --variants")
    port = free_port()
    config = pg.dir / "pgbouncer.ini"
    config.write_text(
        f"[databases]\n* = host=127.0.0.1 port={pg.port}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"unix_socket_dir =\nauth_type = trust\nauth_file = {pg.dir / 'users.txt'}\npool_mode = transaction\n"
        "max_client_conn = 1000\ndefault_pool_size = 20\nignore_startup_parameters = extra_float_digits,options\n"
    )
    (pg.dir / "users.txt").write_text('"postgres" ""\n')
    user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([*user, binary, str(config)], stdout=subprocess.DEVNULL, stderr=(pg.dir / "pgbouncer.log").open("wb"))
    try:
        wait_for_port(port, proc, 10, "pgbouncer")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _pg_counts(dsn: str, database: str) -> tuple[int, int]:
    """(sessions, committed transactions) the server has counted for ``database``, this reading's own excluded."""
    time.sleep(1.2)  # ended backends' statistics are flushed within a second
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT sessions, xact_commit FROM pg_stat_database WHERE datname = %s", (database,))
        sessions, commits = cursor.fetchone()
    conn.close()
    return sessions, commits


def _ingest(source: Path, home: Path, dagster_home: Path, extra_env: dict[str, str], workers: int) -> float:
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "PYTHONPATH": str(REPO), "DAGSTER_DISABLE_TELEMETRY": "1", **extra_env}
    command = [sys.executable, "-m", "lerobot_assets.cli", "ingest", str(source), "--name", NAME, "--home", str(home),
               "--workers", str(workers), "-q"]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"ingest failed: {done.stderr[-2000:]}")
    return elapsed


def _episode_runs(dagster_home: Path, since: float) -> tuple[int, float, int]:
    """(runs, seconds, stored events) of the episode runs that started after ``since``."""
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        records = [r for r in instance.get_run_records(filters=RunsFilter(job_name=f"{NAME}__ingest_episodes")) if r.start_time and r.start_time >= since]
        events = sum(len(instance.all_logs(r.dagster_run.run_id)) for r in records)
    return len(records), sum(r.end_time - r.start_time for r in records), events


def run_variant(variant: str, source: Path, tmp: Path, pg: PostgresServer | None, bouncer_port: int | None, workers: int,
                prefix: str = "") -> dict:
    kind, extra_env, unix_socket = VARIANTS[variant]
    dagster_home = tmp / variant / "dagster"
    dagster_home.mkdir(parents=True)
    dsn = database = None
    if kind in ("postgres", "pgbouncer"):
        assert pg is not None
        database = f"{prefix}bench_{variant}"
        admin = psycopg2.connect(pg.url.replace("postgresql+psycopg2", "postgresql"))
        admin.autocommit = True
        admin.cursor().execute(f"CREATE DATABASE {database}")
        admin.close()
        dsn = pg.url.replace("postgresql+psycopg2", "postgresql").rsplit("/", 1)[0] + f"/{database}"
        url = pg.url.rsplit("/", 1)[0] + f"/{database}"
        if unix_socket:  # libpq's host= parameter naming the socket's directory
            url = f"postgresql+psycopg2://postgres@/{database}?host={pg.dir}&port={pg.port}"
        if kind == "pgbouncer":  # Dagster connects to the pooler, which keeps server connections open
            url = f"postgresql+psycopg2://postgres@127.0.0.1:{bouncer_port}/{database}"
        (dagster_home / "dagster.yaml").write_text(f"storage:\n  postgres:\n    postgres_url: {url}\ntelemetry:\n  enabled: false\n")
    else:
        (dagster_home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {json.dumps(str(dagster_home))}\ntelemetry:\n  enabled: false\n")
    DagsterInstance.from_config(str(dagster_home)).dispose()  # the schema is created before the clock starts
    figures: dict = {}
    for phase in ("full", "unchanged"):
        before = _pg_counts(dsn, database) if dsn else None
        since = time.time()
        wall = _ingest(source, tmp / variant / "home", dagster_home, extra_env, workers)
        after = _pg_counts(dsn, database) if dsn else None
        runs, seconds, events = _episode_runs(dagster_home, since)
        figures[phase] = {"cli_s": round(wall, 2), "episode_runs": runs, "episode_runs_s": round(seconds, 2), "events": events}
        if before and after:
            figures[phase]["pg_sessions"] = after[0] - before[0] - 1
            figures[phase]["pg_commits"] = after[1] - before[1]
    return figures


def _durable(pg: PostgresServer) -> None:
    """Commits flushed to disk as on a real server (the test server starts with ``fsync=off``);
    SQLite's default storage syncs its commits too."""
    admin = psycopg2.connect(pg.url.replace("postgresql+psycopg2", "postgresql"))
    admin.autocommit = True
    admin.cursor().execute("ALTER SYSTEM SET fsync = on")
    admin.cursor().execute("SELECT pg_reload_conf()")
    admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=150)
    parser.add_argument("--variants", default="sqlite,postgres,postgres_batched,pgbouncer_batched")
    parser.add_argument("--rounds", type=int, default=1, help="each round runs every variant once, in order")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    variants = args.variants.split(",")
    assert variants[0] == "sqlite" and set(variants) <= set(VARIANTS), f"variants: sqlite first, then some of {list(VARIANTS)}"
    lengths = [20 + (i * 7) % 21 for i in range(args.episodes)]
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="la-pg-bench-") as tmp_dir, PostgresServer() as pg:
        tmp = Path(tmp_dir)
        _durable(pg)
        source = generate_dataset(tmp / "src", episode_lengths=lengths, cameras=["top"], height=64, width=64, fps=10,
                                  codec="libx264", episodes_per_file=50, files_per_chunk=10)
        with pgbouncer(pg) if any(VARIANTS[v][0] == "pgbouncer" for v in variants) else nullcontext() as bouncer_port:
            for number in range(args.rounds):
                rounds.append({v: run_variant(v, source, tmp / f"round{number}", pg, bouncer_port, args.workers, f"r{number}_") for v in variants})
    summary: dict = {}
    for number, results in enumerate(rounds):
        base = results["sqlite"]
        for variant in variants[1:]:
            for phase in ("full", "unchanged"):
                f, b = results[variant][phase], base[phase]
                f["runs_over_sqlite"] = round(f["episode_runs_s"] / b["episode_runs_s"], 2)
                f["cli_over_sqlite"] = round(f["cli_s"] / b["cli_s"], 2)
                f["sessions_per_episode"] = round(f["pg_sessions"] / args.episodes, 1)
                summary.setdefault(f"{variant}_{phase}_runs_over_sqlite", []).append(f["runs_over_sqlite"])
                print(f"round {number} {variant} {phase}: episode runs {f['episode_runs_s']:.1f} s vs sqlite {b['episode_runs_s']:.1f} s "
                      f"({f['runs_over_sqlite']}x), CLI {f['cli_s']:.1f} s vs {b['cli_s']:.1f} s ({f['cli_over_sqlite']}x); "
                      f"{f['pg_sessions']} server sessions opened ({f['sessions_per_episode']}/episode), {f['pg_commits']} "
                      f"transactions, {f['events']} events in {f['episode_runs']} episode runs")
    medians = {key: statistics.median(values) for key, values in summary.items()}
    print("medians over rounds:", ", ".join(f"{k} {v}x" for k, v in medians.items()))
    print(json.dumps({"episodes": args.episodes, "frames": sum(lengths), "medians": medians, "rounds": rounds}))


if __name__ == "__main__":
    main()
