"""Full ingest of a generated dataset vs. applying a one-episode upstream change.

    .venv/bin/python benchmarks/incremental.py [--episodes 20] [--frames 120] [--cameras 3] [--size 240x320]

The dataset is a git repository (standing in for a Hub repo). Both runs go through the CLI's code
path (`lerobot_assets.ingest`) with a persistent Dagster instance. Goal: the update costs at most
2/N of the full ingest, N = number of episodes.
"""

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lerobot_assets.runtime.commands import ingest
from lerobot_assets.testing.synthetic import generate_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.datasets import shift_actions  # noqa: E402  (an upstream edit of some episodes)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=b@example.com", "-c", "user.name=b", *args],
                   check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--frames", type=int, default=300, help="frames per episode (300 = 10 s at 30 fps)")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--size", default="480x640", help="HxW of every camera")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    height, width = (int(x) for x in args.size.split("x"))

    with tempfile.TemporaryDirectory(prefix="la-bench-") as tmp:
        repo = Path(tmp) / "repo"
        started = time.perf_counter()
        generate_dataset(repo, episode_lengths=[args.frames] * args.episodes,
                         cameras=[f"cam{i}" for i in range(args.cameras)], height=height, width=width,
                         episodes_per_file=4, files_per_chunk=4)
        _git(repo, "init", "-q")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", "dataset")
        print(f"generated {args.episodes} episodes x {args.frames} frames x {args.cameras} cameras "
              f"({height}x{width}, AV1) in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        home = Path(tmp) / "home"

        started = time.perf_counter()
        full = ingest(str(repo), name="bench", home=home, workers=args.workers)
        full_s = time.perf_counter() - started

        shift_actions(repo, [args.episodes // 2])
        _git(repo, "commit", "-qam", "edit one episode")
        started = time.perf_counter()
        update = ingest(str(repo), name="bench", home=home, workers=args.workers)
        update_s = time.perf_counter() - started

        started = time.perf_counter()
        noop = ingest(str(repo), name="bench", home=home, workers=args.workers)
        noop_s = time.perf_counter() - started

    assert update["materialized"] == [args.episodes // 2], update
    assert noop["materialized"] == [], noop
    target = 2 / args.episodes
    result = {
        "episodes": args.episodes,
        "rows": full["rows"],
        "full_ingest_s": round(full_s, 2),
        "one_episode_update_s": round(update_s, 2),
        "unchanged_reingest_s": round(noop_s, 2),
        "update_over_full": round(update_s / full_s, 3),
        "target_at_most": round(target, 3),
        "goal_met": update_s / full_s <= target,
    }
    print(f"full ingest        {full_s:7.2f} s  ({full['rows']} rows, {len(full['materialized'])} episodes)")
    print(f"1-episode update   {update_s:7.2f} s  ratio {update_s / full_s:.3f} (goal <= 2/N = {target:.3f})")
    print(f"unchanged re-run   {noop_s:7.2f} s  ratio {noop_s / full_s:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
