"""Relabelling from Python and the CLI (``lerobot-assets relabel / diff / merge``).

``relabel`` runs the dataset's ``relabel_check`` job (the label file and its blocking check, see
:mod:`lerobot_assets.defs.labels`), then its ``relabel`` job once per labelled episode, through the
home's persistent instance like ``ingest``; ``diff`` and ``merge`` work on the table directly.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, ExecuteInProcessResult

from lerobot_assets.core.errors import LeRobotAssetsError
from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.core.table.branches import diff_branch, merge_branch
from lerobot_assets.core.table.label_files import Label, LabelError, check_branch, column_specs
from lerobot_assets.defs.partitions import dataset_asset_key, episode_key
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.instance import dagster_instance
from lerobot_assets.runtime.registry import registry_of
from lerobot_assets.runtime.runner import Settings, failure_message, run_job


def _run_checked(
    instance: DagsterInstance,
    settings: Settings,
    dataset: str,
    use: str,
    labels_path: Path | None = None,
    **kwargs: Any,
) -> ExecuteInProcessResult:
    """One in-process run of the relabel assets; a failed label check raises :class:`LabelError` with its problems,
    naming ``labels_path``, the user's label file, when given."""
    result = run_job(instance, settings, dataset, use, **kwargs)
    if not result.success:
        for evaluation in result.get_asset_check_evaluations():
            if not evaluation.passed:
                problems = evaluation.metadata["problems"].value
                where = f" label file {str(labels_path)!r}:" if labels_path else ""
                raise LabelError(
                    f"labels for dataset {dataset!r} were rejected, nothing was written:{where}", problems
                )
        raise LeRobotAssetsError(failure_message(result.all_events))
    return result


def relabel(
    name: str,
    labels_path: str | Path,
    branch: str,
    home: str | Path | None = None,
    new_columns: Sequence[str] = (),
) -> dict[str, Any]:
    """Validate a label file against dataset ``name``'s table, then write it onto ``branch``, one run per episode.

    ``new_columns`` declares new label columns (``next.success:bool=false``) besides the file's header
    block. Returns the JSON-able result printed by ``lerobot-assets relabel``.
    """
    home_ = Home.at(home)
    entry = registry_of(home_).dataset_source(name)
    check_branch(branch)
    instance, settings = dagster_instance(home_), Settings(home_.root)
    path = Path(labels_path).expanduser().resolve()
    column_specs(new_columns)  # a malformed declaration fails here, in one line, before any run
    config = {"path": str(path), "branch": branch, "new_columns": list(new_columns)}
    op = dataset_asset_key(name, "label_file").to_python_identifier()
    checked = _run_checked(instance, settings, name, "relabel_check", run_config={"ops": {op: {"config": config}}}, labels_path=path)
    labels: list[Label] = checked.output_for_node(op)["labels"]
    affected = sorted({label.episode for label in labels})
    rows, episodes, columns, added = 0, [], set[str](), set[str]()
    for index in affected:
        run = _run_checked(instance, settings, name, "relabel", partitions=[episode_key(index)])
        event = run.get_asset_materialization_events()[0].event_specific_data.materialization
        values = {key: value.value for key, value in event.metadata.items()}
        rows += values["rows_changed"]
        if values["rows_changed"]:
            episodes.append(index)
        columns.update(values["columns"])
        added.update(values["new_columns"])
    main = open_read_only(entry.table)  # must outlive the branch opened from it
    version = main.branches[branch].open().version
    return {
        "dataset": name,
        "branch": branch,
        "label_file": str(path),
        "rows": rows,
        "episodes": episodes,
        "columns": sorted(columns),
        "new_columns": sorted(added),
        "materialized": affected,
        "version": version,
    }


def diff(name: str, branch: str, home: str | Path | None = None) -> dict[str, Any]:
    """How ``branch`` of dataset ``name``'s table differs from main (``lerobot-assets diff``)."""
    return {"dataset": name, **diff_branch(registry_of(Home.at(home)).dataset_source(name).table, branch)}


def merge(name: str, branch: str, home: str | Path | None = None, prefer: str | None = None) -> dict[str, Any]:
    """Merge ``branch`` into main of dataset ``name``'s table (``lerobot-assets merge``); ``prefer`` resolves conflicts."""
    return {"dataset": name, **merge_branch(registry_of(Home.at(home)).dataset_source(name).table, branch, prefer)}
