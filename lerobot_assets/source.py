"""Pinning a dataset source to an exact revision and keeping a local copy of it.

A source is either a Hugging Face Hub dataset repo id (resolved to a commit sha and downloaded with
``snapshot_download(revision=sha)``) or a local directory (its git HEAD when it is in a git
repository, else a content hash of its files). The copy lives under
``<home>/sources/<name>/<revision>`` and is written atomically, so a failed download leaves nothing
behind that a later run could mistake for a complete snapshot.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lerobot_assets.errors import LeRobotAssetsError
from lerobot_assets.home import DatasetSource

log = logging.getLogger(__name__)


#: A Hub repo id: ``org/name`` with the characters the Hub allows.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


class SourceError(LeRobotAssetsError):
    """A source cannot be resolved or copied."""


@dataclass(frozen=True)
class Snapshot:
    """A local copy of a source at one revision."""

    revision: str
    path: Path
    files: int
    bytes: int


def classify_source(source: str) -> str:
    """``"local"`` for an existing directory, ``"hub"`` for something shaped like ``org/name``."""
    if Path(source).expanduser().is_dir():
        return "local"
    if _REPO_ID.fullmatch(source) and ".." not in source:
        return "hub"
    raise SourceError(
        f"source {source!r} is neither an existing directory nor a Hub dataset repo id like 'lerobot/pusht'"
    )


@dataclass(frozen=True)
class HubSettings:
    """How to reach the Hub. ``None`` fields fall back to huggingface_hub's own environment handling
    (``HF_TOKEN``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``)."""

    endpoint: str | None = None
    token: str | None = None
    offline: bool = False


def latest_revision(source: DatasetSource, hub: HubSettings) -> str:
    """The revision ``source`` resolves to now (cheap: no download), used by the sensor."""
    if source.kind == "hub":
        return _hub_revision(source, hub)
    path = Path(source.source)
    if not path.is_dir():
        raise SourceError(f"dataset {source.name!r}: source directory {str(path)!r} does not exist")
    git_head = _git_head(path)
    return git_head if git_head else _content_hash(path)


def pin(source: DatasetSource, cache: Path, hub: HubSettings) -> Snapshot:
    """Resolve ``source`` to an exact revision and return a local copy pinned to it."""
    if source.kind == "hub":
        return _pin_hub(source, cache, hub)
    path = Path(source.source).expanduser().absolute()
    if not path.is_dir():
        raise SourceError(f"dataset {source.name!r}: source directory {str(path)!r} does not exist")
    git_head = _git_head(path)
    revision = git_head or _content_hash(path)
    target = cache / revision
    if not target.is_dir():
        with _atomic_dir(target) as tmp:
            if git_head:
                _git_export(path, git_head, tmp)
            else:
                shutil.copytree(path, tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
    return _describe(revision, target)


def _describe(revision: str, path: Path) -> Snapshot:
    files = [p for p in path.rglob("*") if p.is_file()]
    return Snapshot(revision, path, len(files), sum(p.stat().st_size for p in files))


class _atomic_dir:
    """Build a directory under a temporary name and rename it into place only on success."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.tmp.rename(self.target)
                return
            except OSError:
                if not self.target.is_dir():  # a concurrent run may have finished the same copy first
                    raise
        shutil.rmtree(self.tmp, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _git(path: Path, *args: str, binary: bool = False) -> str | bytes | None:
    try:
        result = subprocess.run(["git", "-C", str(path), *args], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout if binary else result.stdout.decode().strip()


def _git_head(path: Path) -> str | None:
    """HEAD's sha when ``path``'s files are committed in a git repository, else None.

    A directory inside a work tree but not tracked (e.g. ignored, like the demo's sample under
    ``.lerobot_assets/``) is pinned by content instead.
    """
    if _git(path, "rev-parse", "--is-inside-work-tree") != "true" or not _git(path, "ls-files", "--", "."):
        return None
    return _git(path, "rev-parse", "--verify", "HEAD")


def _git_export(path: Path, sha: str, target: Path) -> None:
    """Write the files of ``path`` as committed at ``sha`` (not the working tree) into ``target``."""
    prefix = _git(path, "rev-parse", "--show-prefix") or ""
    if _git(path, "status", "--porcelain", "--", ".") :
        log.warning("%s has uncommitted changes; using the committed state at %s", path, sha[:12])
    data = _git(path, "archive", "--format=tar", f"{sha}:{prefix}" if prefix else sha, binary=True)
    if data is None:
        raise SourceError(f"cannot export {str(path)!r} at commit {sha} with git archive")
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(target, filter="data")


def _content_hash(path: Path) -> str:
    """A sha256 over every file's relative path and content: the revision of a plain directory."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def _hub_api(hub: HubSettings):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.endpoint, token=hub.token)


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning "the Hub cannot give us this now". huggingface_hub's own errors are all ``OSError``s; the
    network errors of its HTTP client are not (httpx2 in huggingface_hub 2.x, httpx in 1.x; requests in 0.x raises
    ``OSError`` subclasses)."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except ImportError:
            pass
    return tuple(errors)


def _hub_offline(hub: HubSettings) -> bool:
    return hub.offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _hub_revision(source: DatasetSource, hub: HubSettings) -> str:
    if _hub_offline(hub):
        raise SourceError(
            f"dataset {source.name!r}: cannot resolve Hub repo {source.source!r} at revision "
            f"{source.revision or 'main'}: offline mode is on (HubSettings.offline or HF_HUB_OFFLINE)"
        )
    try:
        info = _hub_api(hub).dataset_info(source.source, revision=source.revision)
    except _hub_errors() as exc:
        raise SourceError(
            f"dataset {source.name!r}: cannot resolve Hub repo {source.source!r} at revision "
            f"{source.revision or 'main'}: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    return info.sha


def _pin_hub(source: DatasetSource, cache: Path, hub: HubSettings) -> Snapshot:
    from huggingface_hub import snapshot_download

    offline = _hub_offline(hub)
    revision = source.revision if offline else _hub_revision(source, hub)
    try:
        path = snapshot_download(
            source.source,
            repo_type="dataset",
            revision=revision,
            cache_dir=str(cache / "hf_cache"),
            endpoint=hub.endpoint,
            token=hub.token,
            local_files_only=offline,
        )
    except _hub_errors() as exc:
        raise SourceError(
            f"dataset {source.name!r}: download of Hub repo {source.source!r} at {revision or 'main'} failed: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if not offline:
        _record_ref(Path(path).parents[1], source.revision or "main", revision)
    return _describe(Path(path).name, Path(path))


def _record_ref(storage: Path, ref: str, sha: str) -> None:
    """Let an offline pin of ``ref`` find this snapshot: ``snapshot_download(revision=sha)`` records no ref itself,
    and offline it resolves a branch or tag only through ``<repo cache>/refs/<ref>``."""
    if ref == sha:
        return
    path = storage / "refs" / ref
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(sha)
    tmp.replace(path)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]
