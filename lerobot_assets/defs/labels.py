"""Relabelling in Dagster: a label file, a blocking check against the table, and per-episode writes.

    <dataset>/label_file --[labels_fit_table, blocking]--> <dataset>/episode_labels (one partition per episode)

``label_file`` reads the file named in its run config, and its check ``labels_fit_table`` validates
every label against the table (or the branch, when it exists); being blocking, it stops the run
before any write when they do not fit. ``episode_labels`` writes one episode's labels onto the
branch, so a relabel shows up as materializations of exactly the affected episode partitions. The
commands of :mod:`lerobot_assets.runtime.relabel` run that sequence through the home's instance.
"""

import hashlib
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
)

from lerobot_assets.core.table.access import open_read_only
from lerobot_assets.core.table.label_files import Label, LabelError, check_branch, column_specs, read_label_file
from lerobot_assets.core.table.labels import apply_labels, validate_labels
from lerobot_assets.defs.partitions import LABELS_GROUP, dataset_asset_key, episode_index, episode_partitions
from lerobot_assets.defs.resources import StorageResource

_PREVIEW_LABELS = 20


class LabelFileConfig(Config):
    """Run config of ``label_file``."""

    path: str  # CSV, parquet or JSON with episode, frame_start, frame_end, column, value
    branch: str  # the table branch the labels go to (created from main if missing); never main
    new_columns: list[str] = []  # declarations name:type=default, besides the file's header block


def _read_labels(context: AssetExecutionContext, dataset: str, config: LabelFileConfig, storage: StorageResource):
    """The labels of one relabel request, read from the file, with the branch they are for; checked against the table.

    The check reads the branch when it exists (it may already hold new label columns), else main.
    """
    path = Path(config.path).expanduser().resolve()
    branch = check_branch(config.branch)
    label_set = read_label_file(path)
    labels = label_set.labels
    declared = column_specs(config.new_columns)
    clashing = sorted(name for name, spec in declared.items() if label_set.columns.get(name, spec) != spec)
    columns = {**label_set.columns, **declared}
    if clashing:
        raise LabelError(f"label file {str(path)!r} declares columns {clashing} differently from --new-column")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    episodes = sorted({label.episode for label in labels})
    labelled = sorted({label.column for label in labels})
    context.log.info(f"{dataset}: {len(labels)} labels for episodes {episodes}, columns {labelled}")
    yield Output(
        {"path": str(path), "sha256": digest, "branch": branch, "labels": labels, "columns": columns},
        metadata={
            "label_file": MetadataValue.path(str(path)),
            "sha256": digest,
            "branch": branch,
            "labels": len(labels),
            "episodes": MetadataValue.json(episodes),
            "columns": MetadataValue.json(labelled),
            "new_columns": MetadataValue.json({name: spec.to_json() for name, spec in columns.items()}),
            "preview": MetadataValue.md(_preview(labels)),
        },
    )
    main = open_read_only(storage.table_url(dataset))  # must outlive the branch opened from it
    target = main.branches[branch].open() if branch in main.branches.names() else main
    problems = validate_labels(target, labels, columns)
    yield AssetCheckResult(
        check_name="labels_fit_table",
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description="; ".join(problems) if problems else f"{len(labels)} labels fit the table",
        metadata={"problems": MetadataValue.json(problems), "branch": branch, "label_file": str(path)},
    )


def _preview(labels: list[Label]) -> str:
    """The first labels as a Markdown table, for the asset's page in the UI."""
    lines = ["| episode | frame_start | frame_end | column | value |", "|---|---|---|---|---|"]
    for label in labels[:_PREVIEW_LABELS]:
        cells = [label.episode, label.frame_start, label.frame_end, label.column, repr(label.value)]
        lines.append("| " + " | ".join("" if c is None else str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _write_labels(context: AssetExecutionContext, dataset: str, label_file: dict, storage: StorageResource) -> MaterializeResult:
    """One episode's labels written onto the label file's branch of the table (main is untouched)."""
    index = episode_index(context.partition_key)
    labels: list[Label] = label_file["labels"]
    if not any(label.episode == index for label in labels):
        labelled = sorted({label.episode for label in labels})
        raise Failure(
            f"dataset {dataset!r}, episode {index}: label file {label_file['path']!r} has no labels for it "
            f"(it labels episodes {labelled}); materialize only the labelled episodes"
        )
    branch = label_file["branch"]
    result = apply_labels(
        storage.table_url(dataset),
        labels,
        branch,
        f"relabel {dataset} episode {index} from {Path(label_file['path']).name} ({label_file['sha256'][:12]})",
        episodes=[index],
        new_columns=label_file["columns"],
        source={"file": label_file["path"], "sha256": label_file["sha256"]},
    )
    context.log.info(
        f"{dataset} episode {index}: {result.rows} rows changed in {result.columns} on branch {branch!r}, "
        f"version {result.version}"
    )
    return MaterializeResult(
        metadata={
            "branch": branch,
            "label_file": MetadataValue.path(label_file["path"]),
            "label_file_sha256": label_file["sha256"],
            "rows_changed": result.rows,
            "columns": MetadataValue.json(result.columns),
            "new_columns": MetadataValue.json(result.new_columns),
            "table_version": result.version,
        }
    )


def label_assets(dataset: str) -> tuple[AssetsDefinition, AssetsDefinition]:
    """``label_file`` and ``episode_labels`` of ``dataset``: thin wiring of the functions above."""
    file_key = dataset_asset_key(dataset, "label_file")

    @asset(
        key=file_key,
        group_name=LABELS_GROUP,
        kinds={"csv", "parquet", "json"},
        check_specs=[
            AssetCheckSpec(
                "labels_fit_table",
                asset=file_key,
                blocking=True,
                description="Every label names an existing episode, frames inside it, a column that may be relabelled, "
                "and a value of that column's type; nothing is written otherwise.",
            )
        ],
    )
    def label_file(context: AssetExecutionContext, config: LabelFileConfig, storage: StorageResource):
        """The labels of one relabel request, read from the file, with the branch they are for; checked against the table."""
        yield from _read_labels(context, dataset, config, storage)

    @asset(
        key=dataset_asset_key(dataset, "episode_labels"),
        partitions_def=episode_partitions(dataset),
        ins={"label_file": AssetIn(key=file_key)},
        deps=[dataset_asset_key(dataset, "deeplake_table")],
        group_name=LABELS_GROUP,
        kinds={"deeplake"},
    )
    def episode_labels(context: AssetExecutionContext, label_file: dict, storage: StorageResource) -> MaterializeResult:
        """One episode's labels written onto the label file's branch of the table (main is untouched)."""
        return _write_labels(context, dataset, label_file, storage)

    return label_file, episode_labels
