"""The ``lerobot-assets`` command line.

Every command that reports a result prints one JSON object on the last line of stdout; progress
goes to stderr. On failure: a one-line ``error: ...`` on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from lerobot_assets.core.errors import LeRobotAssetsError
from lerobot_assets.runtime.home import HOME_ENV, TABLES_ENV, Home, default_home
from lerobot_assets.runtime.registry import registry_of

log = logging.getLogger("lerobot_assets")


def _print_result(result: dict[str, Any]) -> None:
    print(json.dumps(result, default=str))


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home).absolute() if args.home else default_home()


def cmd_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from lerobot_assets.runtime.commands import ingest, parse_episodes

    return ingest(
        args.source,
        name=args.name,
        revision=args.revision,
        episodes=parse_episodes(args.episodes) if args.episodes else None,
        home=_home(args),
        image_format=args.image_format,
        quality=args.quality,
        workers=args.workers,
    )


def cmd_snapshot(args: argparse.Namespace) -> dict[str, Any]:
    from lerobot_assets.runtime.commands import snapshot

    return snapshot(args.name, tag=args.tag, home=_home(args))


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    from lerobot_assets.runtime.commands import info

    return info(args.name, home=_home(args))


def cmd_relabel(args: argparse.Namespace) -> dict[str, Any]:
    from lerobot_assets.runtime.relabel import relabel

    return relabel(args.name, args.labels, args.branch, home=_home(args), new_columns=args.new_column)


def cmd_diff(args: argparse.Namespace) -> dict[str, Any]:
    from lerobot_assets.runtime.relabel import diff

    return diff(args.name, args.branch, home=_home(args))


def cmd_merge(args: argparse.Namespace) -> dict[str, Any]:
    from lerobot_assets.runtime.relabel import merge

    return merge(args.name, args.branch, home=_home(args), prefer=args.prefer)


def cmd_query(args: argparse.Namespace) -> dict[str, Any]:
    """Run TQL on a table (head or ``--tag``); print a text table unless ``--json``."""
    from lerobot_assets.core.table.query import open_view, run_query

    table = registry_of(Home(_home(args))).dataset_source(args.name).table
    rows = run_query(open_view(table, args.tag), args.tql, limit=args.limit)
    if not args.json:
        columns = list(rows[0]) if rows else []
        print("\t".join(columns))
        for row in rows:
            print("\t".join(str(row[c]) for c in columns))
    return {"dataset": args.name, "tag": args.tag, "rows": len(rows), "results": rows if args.json else None}


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from lerobot_assets.cli.demo import run_demo

    return run_demo(_home(args))


def cmd_ui(args: argparse.Namespace) -> dict[str, Any]:
    """Start ``dagster dev`` on this home's instance (replaces this process)."""
    home = Home(_home(args))
    from lerobot_assets.runtime.instance import dagster_instance

    dagster_instance(home)  # makes sure the embedded instance and its dagster.yaml exist, unless DAGSTER_HOME is set
    dagster_home = os.environ.get("DAGSTER_HOME") or str(home.dagster_home)
    env = {**os.environ, "DAGSTER_HOME": dagster_home, HOME_ENV: str(home.root)}
    dagster = str(Path(sys.executable).with_name("dagster"))
    command = [dagster, "dev", "-m", "lerobot_assets.definitions", "--host", args.host, "--port", str(args.port)]
    log.info("DAGSTER_HOME=%s %s", dagster_home, " ".join(command))
    os.execve(dagster, command, env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lerobot-assets",
        description="Versioned, queryable Deeplake tables from LeRobot datasets, orchestrated by Dagster.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help=f"home directory (default: ${HOME_ENV}, else ./.lerobot_assets)")
    common.add_argument(
        "--tables",
        help=f"tables root: where tables and the dataset registry live, a local path or s3://... "
        f"(default: ${TABLES_ENV}, else <home>/tables)",
    )
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and the JSON result")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_ingest_commands(sub, common)
    _add_table_commands(sub, common)
    _add_label_commands(sub, common)
    return parser


def _add_ingest_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``demo``, ``ingest`` and ``snapshot``: what builds tables and tags them."""
    p = sub.add_parser("demo", parents=[common], help="generate a sample dataset, ingest it, snapshot it, query it")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ingest", parents=[common], help="ingest a Hub repo id or a local LeRobot dataset")
    p.add_argument("source", help="Hub dataset repo id (org/name) or a local directory")
    p.add_argument("--name", help="dataset name (default: derived from the source)")
    p.add_argument("--revision", help="Hub branch, tag or commit sha (default: latest)")
    p.add_argument("--episodes", help="subset of episodes, e.g. 0,3,7-9")
    p.add_argument("--image-format", choices=("jpeg", "png"), default="jpeg")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--workers", type=int, metavar="K", help="episodes a run decodes at once, in threads (default: CPU count)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("snapshot", parents=[common], help="tag the table's current version for training")
    p.add_argument("name")
    p.add_argument("--tag", help="tag name (default: <name>-<UTC time>-<revision>, then -2, -3... within the same second)")
    p.set_defaults(func=cmd_snapshot)


def _add_table_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``info``, ``query`` and ``ui``: what reads tables and runs."""
    p = sub.add_parser("info", parents=[common], help="show a table's version, tags, rows and episodes")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("query", parents=[common], help="run a TQL query on a table (head or a tag)")
    p.add_argument("name")
    p.add_argument("tql", help='e.g. "SELECT * WHERE episode_index == 1 AND \\"timestamp\\" < 0.5"')
    p.add_argument("--tag", help="query this snapshot instead of the head")
    p.add_argument("--limit", type=int, default=100, help="rows to print (default 100)")
    p.add_argument("--json", action="store_true", help="results in the JSON line instead of a text table")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("ui", parents=[common], help="run `dagster dev` on this home's Dagster instance")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_ui)


def _add_label_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``relabel``, ``diff`` and ``merge``: labels on a review branch, and merging it."""
    p = sub.add_parser("relabel", parents=[common], help="write labels from a file onto a review branch of the table")
    p.add_argument("name")
    p.add_argument(
        "--labels",
        required=True,
        help="CSV, parquet or JSON with episode, frame_start, frame_end (exclusive; both optional), column, value",
    )
    p.add_argument("--branch", required=True, help="branch to write onto, created from main if missing (never main)")
    p.add_argument(
        "--new-column",
        action="append",
        default=[],
        metavar="NAME:TYPE=DEFAULT",
        help="declare a new label column, e.g. next.success:bool=false (types: text, bool, int64, float32); "
        "or put '# new-column: NAME:TYPE=DEFAULT' lines at the top of a CSV label file",
    )
    p.set_defaults(func=cmd_relabel)

    p = sub.add_parser("diff", parents=[common], help="show the cells a merge of the branch would write, and conflicts")
    p.add_argument("name")
    p.add_argument("--branch", required=True)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("merge", parents=[common], help="merge a reviewed label branch into main")
    p.add_argument("name")
    p.add_argument("--branch", required=True)
    p.add_argument(
        "--prefer",
        choices=("branch", "main"),
        help="which side wins cells both the branch and main changed since the branch was made (else: refused)",
    )
    p.set_defaults(func=cmd_merge)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)  # Dagster's console follows it (runtime.runner.quiet)
    for noisy in ("alembic", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.tables:  # every command, and what it starts (dagster dev), uses this tables root
        os.environ[TABLES_ENV] = args.tables
    try:
        result = args.func(args)
    except LeRobotAssetsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - storage and library failures (disk full, I/O): one line, exit 1
        log.debug("unexpected failure", exc_info=True)
        first_line = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: {type(exc).__name__}: {first_line} (run with LEROBOT_ASSETS_DEBUG=1 for a traceback)",
              file=sys.stderr)
        if os.environ.get("LEROBOT_ASSETS_DEBUG"):
            raise
        return 1
    _print_result(result)
    return 0
