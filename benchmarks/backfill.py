"""The path a UI backfill takes: ``dagster dev`` (webserver + daemon) on Dagster's default SQLite
instance, a backfill of every episode partition launched through GraphQL as the UI launches it,
run by the daemon in runs of up to 50 episodes (``BackfillPolicy.multi_run``), each run in a process
of its own. Measured against, on the same dataset and in the same run:

- limit: decode every frame of every video file once and JPEG-encode it, on both cores (``ingest.limit``);
- seed:  the seed's loop: per episode and camera, decode the file from its start (``ingest.naive``);
- unchanged: the same backfill again on the unchanged dataset (every episode recorded as unchanged).

    .venv/bin/python benchmarks/backfill.py --shape small   # 200 episodes of 60-120 frames, one 96x96 camera (pusht-like)
    .venv/bin/python benchmarks/backfill.py --shape large   # 10 episodes of 300 frames, 3 cameras 480x640 AV1

Goals (issue 15): large >= 0.8x limit and >= 2x seed; small >= 0.6x limit; unchanged <= 5% of the full backfill.
The dataset-level assets are materialized first (by ``ingest --episodes 0``, which also writes
episode 0; the backfill covers all episodes, so episode 0 is recorded as unchanged in it).
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from dagster import DagsterInstance, RunsFilter
from ingest import limit, naive

from lerobot_assets.runtime.commands import ingest
from lerobot_assets.testing.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[1]
_LAUNCH = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }"""
EPISODE_ASSETS = ("telemetry_frame", "decoded_camera_frames", "deeplake_table")


def _graphql(base: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["data"]


def _serve(home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "DAGSTER_HOME": str(home / "dagster"), "LEROBOT_ASSETS_HOME": str(home),
           "PYTHONPATH": str(REPO), "DAGSTER_DISABLE_TELEMETRY": "1"}
    command = [str(Path(sys.executable).with_name("dagster")), "dev", "-m", "lerobot_assets.definitions", "-h", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(command, cwd=home, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(180):
        try:
            urllib.request.urlopen(f"{base}/server_info", timeout=5)
            return proc, base
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"dagster dev did not start; see {log}")


def backfill(base: str, dataset: str) -> tuple[float, str]:
    """Seconds from launching a backfill of every episode partition of ``dataset`` to its
    completion, and the backfill's id."""
    params = {"partitionsByAssets": [{"assetKey": {"path": [dataset, key]}} for key in EPISODE_ASSETS], "title": "bench"}
    started = time.perf_counter()
    launched = _graphql(base, _LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    while True:
        status = _graphql(base, _STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]["status"]
        if status not in ("REQUESTED", "CANCELING", "FAILING"):
            assert status in ("COMPLETED", "COMPLETED_SUCCESS"), status
            return time.perf_counter() - started, launched["backfillId"]
        time.sleep(0.2)


SHAPES = {
    "small": dict(episode_lengths=[60 + (i * 37) % 61 for i in range(200)], cameras=["top"], height=96, width=96, fps=10,
                  episodes_per_file=200, files_per_chunk=10),
    "large": dict(episode_lengths=[300] * 10, cameras=["cam0", "cam1", "cam2"], height=480, width=640,
                  episodes_per_file=10, files_per_chunk=10),
}


def run_span(home: Path, backfill_id: str) -> tuple[int, float]:
    """How many runs the backfill made, and the seconds from the first one's creation to the last
    one's end: the backfill without the daemon's scheduling latency before its first run."""
    instance = DagsterInstance.from_config(str(home / "dagster"))
    records = instance.get_run_records(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
    return len(records), max(r.end_time for r in records) - min(r.create_timestamp.timestamp() for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="la-backfill-bench-") as tmp:
        root = generate_dataset(Path(tmp) / "ds", **SHAPES[args.shape])
        frames = sum(SHAPES[args.shape]["episode_lengths"]) * len(SHAPES[args.shape]["cameras"])
        home = Path(tmp) / "home"
        ingest(str(root), name="bench", home=home, episodes=[0])
        proc, base = _serve(home, Path(tmp) / "dagster-dev.log")
        try:
            full, full_id = backfill(base, "bench")
            unchanged, unchanged_id = backfill(base, "bench")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        runs, span = run_span(home, full_id)
        _, unchanged_span = run_span(home, unchanged_id)
        limit_s = _timed(limit, root)
        seed_s = _timed(naive, root)
    figures = {
        "shape": args.shape, "camera_frames": frames, "backfill_s": round(full, 2), "unchanged_s": round(unchanged, 2),
        "limit_s": round(limit_s, 2), "seed_s": round(seed_s, 2),
        "backfill_over_limit": round(limit_s / full, 2), "backfill_over_seed": round(seed_s / full, 2),
        "unchanged_share": round(unchanged / full, 3), "runs": runs, "runs_span_s": round(span, 2),
        "unchanged_runs_span_s": round(unchanged_span, 2), "runs_span_over_limit": round(limit_s / span, 2),
        "runs_span_over_seed": round(seed_s / span, 2), "unchanged_span_share": round(unchanged_span / span, 3),
    }
    print(f"{args.shape}: backfill {full:.1f} s ({frames / full:.0f} camera-frames/s), limit {limit_s:.1f} s, seed {seed_s:.1f} s, "
          f"unchanged re-run {unchanged:.1f} s")
    print(f"backfill/limit {figures['backfill_over_limit']}x, backfill/seed {figures['backfill_over_seed']}x, "
          f"unchanged/full {figures['unchanged_share']:.1%}")
    print(f"without the daemon's latency before the first run ({runs} runs, first created to last ended): {span:.1f} s, "
          f"{figures['runs_span_over_limit']}x limit, {figures['runs_span_over_seed']}x seed; unchanged {unchanged_span:.1f} s "
          f"({figures['unchanged_span_share']:.1%})")
    print(json.dumps(figures))


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
