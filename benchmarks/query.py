"""Query latency on a large table, with the indexes ingest creates against the same table without them.

    .venv/bin/python benchmarks/query.py [--episodes 500] [--frames 400]   # 200k rows, ~35 s

The table is written through the project's own code (``open_table``, ``replace_episode``: one
commit per episode, as ingest does) from generated telemetry with 14 joints, one small camera and
eight tasks; its indexes are then built as ``training_snapshot`` builds them. The baseline is a
copy of that table with every index dropped, so both hold the same rows. Each query runs on a
fresh read-only handle: one warm-up, then the median of ``--repeats`` runs. The nearest-state
query also reports recall@10 of the (approximate) vector index against the exact scan.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import deeplake

from lerobot_assets.core.lerobot.meta import read_dataset
from lerobot_assets.core.media.codec import encode_image
from lerobot_assets.core.table.episodes import replace_episode
from lerobot_assets.core.table.schema import build_indexes, open_table
from lerobot_assets.testing.synthetic import generate_dataset, render_frame, table_rows

TASKS = [
    "Pick up the shrimp", "Wipe the table", "Open the drawer", "Close the drawer",
    "Stack the blocks", "Fold the towel", "Pour the water", "Insert the peg",
]
STATE_DIM = 14
FPS = 30


def build_table(root: Path, episodes: int, frames: int) -> str:
    """Write ``episodes`` x ``frames`` rows, one committed episode at a time; return the table's url."""
    template = generate_dataset(root / "template", episode_lengths=(2,), cameras=("cam_high",),
                                state_dim=STATE_DIM, tasks=TASKS[:1], fps=FPS, codec="libx264")
    meta = read_dataset(template, name="bench")
    jpeg = encode_image(render_frame(0, 0, 96, 128))
    url = str(root / "indexed")
    ds = open_table(url, meta, "jpeg")
    for episode in range(episodes):
        task = episode % len(TASKS)
        rows = table_rows(episode, frames, camera="observation.images.cam_high", image=jpeg, fps=FPS,
                          state_dim=STATE_DIM, task_index=task, task=TASKS[task])
        replace_episode(ds, episode, rows, f"bench episode {episode}")
    return url


def drop_indexes(url: str) -> None:
    """Remove every index of the table at ``url`` (the baseline: full scans only)."""
    ds = deeplake.open(url)
    for column in ds.schema.columns:
        for index in list(ds[column.name].indexes):
            ds[column.name].drop_index(str(index))
    ds.commit("drop indexes")


def latency(url: str, tql: str, repeats: int) -> tuple[float, deeplake.DatasetView]:
    """Median seconds of ``tql`` on a fresh read-only handle, after one warm-up run."""
    ds = deeplake.open_read_only(url)
    result = ds.query(tql)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = ds.query(tql)
        len(result)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lerobot-query-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        indexed = build_table(root, args.episodes, args.frames)
        print(f"wrote {args.episodes * args.frames} rows in {args.episodes} commits: {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        build_indexes(indexed)
        print(f"built the vector index: {time.perf_counter() - start:.1f} s")
        plain = str(root / "plain")
        shutil.copytree(indexed, plain)
        drop_indexes(plain)

        table = deeplake.open_read_only(indexed)
        state = table["observation.state"][len(table) // 2 + 45]
        vector = ", ".join(f"{v:.6f}" for v in state + 0.05)
        queries = {
            "one episode's frames": f"SELECT * WHERE episode_index == {args.episodes * 2 // 3}",
            "task equals": "SELECT * WHERE task == 'Fold the towel'",
            "task contains word": "SELECT * WHERE CONTAINS(task, 'towel')",
            "nearest state, top 10": f'SELECT * ORDER BY COSINE_SIMILARITY("observation.state", ARRAY[{vector}]) DESC LIMIT 10',
            "frames per task": "SELECT task[0] AS task, SHAPE(episode_index)[0] AS frames GROUP BY task",
            "time window": 'SELECT * WHERE "timestamp" >= 2.0 AND "timestamp" < 3.0',
        }
        print(f"\n{'query':<24}{'rows':>7}{'no index ms':>13}{'indexed ms':>12}{'speed-up':>10}")
        for name, tql in queries.items():
            slow, exact = latency(plain, tql, args.repeats)
            fast, found = latency(indexed, tql, args.repeats)
            print(f"{name:<24}{len(found):>7}{slow * 1e3:>13.1f}{fast * 1e3:>12.1f}{slow / fast:>9.1f}x")
            if name.startswith("nearest"):
                recall = len(set(found["index"][:].tolist()) & set(exact["index"][:].tolist())) / len(exact)
                print(f"{'':<24}recall@10 of the vector index vs the exact scan: {recall:.2f}")
            elif len(found) != len(exact):
                raise SystemExit(f"{name}: {len(found)} rows with indexes, {len(exact)} without")


if __name__ == "__main__":
    main()
