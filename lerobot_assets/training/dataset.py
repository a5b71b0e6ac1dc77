"""PyTorch access to a snapshot: LeRobotDataset-style items read from a tagged Deeplake table.

torch is an optional dependency of the package, so only this package imports it.

Why it is fast: the small numeric columns of the snapshot are read once, column by column, into
numpy at construction, so building an item's telemetry, windows and padding masks is array
indexing. Only camera frames are read per batch: their encoded JPEG bytes, fetched in one
Deeplake call per camera for the whole batch (``__getitems__``, which the DataLoader uses; all
cameras requested at once, so that reads overlap decoding), or per window of batches with
:class:`ReadAheadBatches` (contiguous rows as range reads: a few requests on S3), each distinct
frame then decoded once in the worker straight into one tensor per camera (float32, or uint8, optionally at a
reduced size; :mod:`~lerobot_assets.training.frames`). The Deeplake dataset is opened
lazily in each process, so the object pickles cheaply for ``spawn`` workers and no handle is
shared across a ``fork``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lerobot_assets.core.errors import TableError
from lerobot_assets.core.lerobot.meta import INDEX_DTYPES
from lerobot_assets.core.lerobot.stats import Stats
from lerobot_assets.core.media.codec import is_jpeg
from lerobot_assets.core.table.access import open_tag
from lerobot_assets.core.table.episode_stats import STATS_COLUMN, load_stats
from lerobot_assets.core.table.metadata import table_metadata
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.registry import registry_of
from lerobot_assets.training.frames import IMAGE_DTYPES, batch_tensor, decode_frames, decode_frames_cuda

log = logging.getLogger(__name__)

#: LeRobot's default tolerance for delta_timestamps that are not multiples of 1/fps.
TOLERANCE_S = 1e-4


@dataclass(frozen=True)
class SnapshotInfo:
    """Which data a run trained on: log these to reload exactly the same rows."""

    dataset: str
    tag: str
    version: str
    table: str


def _decode_device(requested: str) -> str:
    """Where frames will be decoded: ``"cuda"`` only when asked for and nvJPEG can run, else ``"cpu"``."""
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"decode_device must be 'cpu' or 'cuda', not {requested!r}")
    if requested == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        log.warning("decode_device='cuda': torch %s sees no CUDA device, so frames are decoded on the CPU",
                    torch.__version__)
        return "cpu"
    try:
        import torchvision.io  # noqa: F401  (nvJPEG's decode_jpeg)
    except ImportError:
        log.warning("decode_device='cuda' needs torchvision (for nvJPEG), which is not installed: "
                    "frames are decoded on the CPU")
        return "cpu"
    return "cuda"


def delta_indices(delta_timestamps: dict[str, list[float]], fps: float) -> dict[str, np.ndarray]:
    """Frame offsets of ``delta_timestamps``, which must be multiples of 1/fps (LeRobot's check and rounding)."""
    out = {}
    for key, deltas in delta_timestamps.items():
        bad = [d for d in deltas if abs(d * fps - round(d * fps)) / fps > TOLERANCE_S]
        if bad or not deltas:
            raise ValueError(f"delta_timestamps[{key!r}] must be a non-empty list of multiples of 1/{fps:g} s: {bad}")
        out[key] = np.array([round(d * fps) for d in deltas], dtype=np.int64)
    return out


class SnapshotDataset(torch.utils.data.Dataset):
    """The frames of ``dataset`` at snapshot ``tag`` as LeRobotDataset items.

    Each item has every camera as a float32 CHW tensor in [0, 1] (``image_dtype="uint8"``: the
    decoded uint8 pixels, to convert on the training device; ``image_size=(h, w)``: decoded at that
    reduced resolution, see :func:`~lerobot_assets.core.media.codec.decode_rgb`; ``decode_device="cuda"``:
    JPEG frames decoded by nvJPEG into CUDA tensors, in the process that reads the batch, so use
    ``num_workers=0`` or a ``spawn`` context; without CUDA this logs why and decodes on the CPU),
    the numeric features as
    tensors, ``timestamp``/``frame_index``/``episode_index``/``index``/``task_index`` as 0-d
    tensors and ``task`` as text. ``columns`` limits the cameras and features returned (index
    columns and ``task`` always are). ``delta_timestamps`` maps a key to offsets in seconds: the
    item then holds the values at those times stacked on a new first axis, clamped to the
    episode, and ``<key>_is_pad`` marks the clamped ones. ``episodes`` and ``query`` (TQL whose
    result includes the ``index`` column, e.g. ``SELECT * WHERE ...``) restrict which frames are
    samples; windows still read their neighbours in the same episode.

    Give the DataLoader ``collate_fn=collate``: a batch's frames are decoded straight into one
    tensor per camera, and each telemetry column is built as one tensor, which :func:`collate`
    passes on instead of copying. ``stats`` holds the
    LeRobot-style normalization stats stored with the rows at this tag (None if the ingest
    stored none); ``snapshot`` names the exact table version. The dataset is found by name in the
    registry of the tables root: ``tables``, else ``$LEROBOT_ASSETS_TABLES``, else ``<home>/tables``.
    """

    def __init__(
        self,
        dataset: str,
        tag: str,
        home: str | Path | None = None,
        columns: list[str] | None = None,
        delta_timestamps: dict[str, list[float]] | None = None,
        image_transforms: Callable[[torch.Tensor], torch.Tensor] | None = None,
        episodes: list[int] | None = None,
        query: str | None = None,
        image_dtype: str = "float32",
        image_size: tuple[int, int] | None = None,
        decode_device: str = "cpu",
        tables: str | None = None,
    ) -> None:
        self.image_dtype, self.image_size = _image_options(image_dtype, image_size)
        self.decode_device = _decode_device(decode_device)
        url = registry_of(Home.at(home, tables)).dataset_source(dataset).table
        ds = open_tag(url, tag)
        self.snapshot = SnapshotInfo(dataset, tag, ds.version, url)
        metadata = table_metadata(ds)
        cameras, features = _columns(ds, columns, url)
        self.camera_keys: list[str] = cameras
        if not metadata.get("fps"):
            raise TableError(f"{url} at tag {tag!r} has no fps in its metadata; re-ingest it")
        self.fps = float(metadata["fps"])
        self.image_transforms = image_transforms

        if len(ds) == 0:
            raise TableError(f"{url} has no rows at tag {tag!r}")
        # Rows sorted by (episode, index): an episode occupies positions [start, end) of that order.
        index = np.asarray(ds["index"][:], dtype=np.int64)
        episode = np.asarray(ds["episode_index"][:], dtype=np.int64)
        self._order = np.lexsort((index, episode))
        sorted_episode, sorted_index = episode[self._order], index[self._order]
        firsts = np.flatnonzero(np.r_[True, sorted_episode[1:] != sorted_episode[:-1]])
        lengths = np.diff(np.r_[firsts, len(sorted_episode)])
        self._start = np.repeat(firsts, lengths)
        self._end = self._start + np.repeat(lengths, lengths)
        if np.any(sorted_index - sorted_index[self._start] != np.arange(len(index)) - self._start):
            raise TableError(f"{url} at tag {tag!r}: an episode's index values are not consecutive")

        self._values = {name: np.asarray(ds[name][:]) for name in [*features, *INDEX_DTYPES]}
        self._task_names, self._task_codes = _task_codes(ds, episode, self._values["task_index"])
        self._delta = delta_indices(delta_timestamps, self.fps) if delta_timestamps else {}
        unknown = sorted(set(self._delta) - set(cameras) - set(self._values))
        if unknown:
            raise ValueError(f"delta_timestamps keys {unknown} are not returned columns")

        self._samples = _samples(ds, sorted_episode, sorted_index, firsts, episodes, query, f"{url} at tag {tag!r}")
        self.episodes: list[int] = np.unique(sorted_episode[self._samples]).tolist()
        # each episode's first row in the table, for the stats (read when asked for: :attr:`stats`)
        self._first_rows = (sorted_episode[firsts], self._order[firsts])
        self._ds: Any = None
        self._ds_pid = -1
        self._held: tuple[int, dict[tuple[int, ...], _WindowReads]] = (0, {})  # (pid, reads by window)

    def __len__(self) -> int:
        return len(self._samples)

    @functools.cached_property
    def stats(self) -> Stats | None:
        """LeRobot-style normalization stats of the snapshot's episodes, stored with the rows at this
        tag (None if the ingest stored none). Read and aggregated at first use, not at construction:
        that reads every episode's stats (~10 KB of JSON each)."""
        episodes, rows = self._first_rows
        return load_stats(self._table(), dict(zip(episodes.tolist(), rows.tolist())))

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ds": None, "_ds_pid": -1, "_held": (0, {})}

    def _table(self) -> Any:
        """The Deeplake dataset, opened once per process (a handle must not cross a fork)."""
        if self._ds is None or self._ds_pid != os.getpid():
            ds = open_tag(self.snapshot.table, self.snapshot.tag)
            if ds.version != self.snapshot.version:
                raise TableError(
                    f"tag {self.snapshot.tag!r} of {self.snapshot.table} now points at version {ds.version}, "
                    f"not {self.snapshot.version}"
                )
            self._ds, self._ds_pid = ds, os.getpid()
        return self._ds

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Items of a whole batch: one Deeplake read per camera, frames decoded into one tensor per camera."""
        positions = self._samples[np.asarray(indices, dtype=np.int64)]
        rows = self._order[positions]
        windows, pads = {}, {}
        for key in self._delta:
            windows[key], pads[f"{key}_is_pad"] = self._window(key, positions)
        reads = self._reads(indices)
        images = {cam: self._frames(reads[cam], windows[cam] if cam in windows else rows) for cam in self.camera_keys}
        columns = {key: batch_tensor(values[windows.get(key, rows)]) for key, values in self._values.items()}
        columns.update({key: batch_tensor(pad) for key, pad in pads.items()})
        items: list[dict[str, Any]] = []
        for b, row in enumerate(rows):
            item: dict[str, Any] = {}
            for cam, frames in images.items():
                item[cam] = self.image_transforms(frames[b]) if self.image_transforms else frames[b]
            item.update({key: column[b] for key, column in columns.items()})
            item["task"] = self._task_names[self._task_codes[row]]
            items.append(item)
        return items

    def _window(self, key: str, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Table rows of ``key``'s window around each sample position, clamped to its episode, and the padding mask."""
        wanted = positions[:, None] + self._delta[key][None, :]
        start, end = self._start[positions, None], self._end[positions, None]
        return self._order[np.clip(wanted, start, end - 1)], (wanted < start) | (wanted >= end)

    def _reads(self, indices: Sequence[int]) -> _WindowReads:
        """The reads holding batch ``indices``' frames: those of its :class:`ReadAheadBatches` window
        (started ahead, or by an earlier batch of the window), else started now; a window batch also
        starts the reads of the worker's next window. The worker holds at most those two windows."""
        window = tuple(getattr(indices, "window", None) or indices)
        if not set(indices) <= set(window):
            window = tuple(indices)
        ahead = tuple(getattr(indices, "ahead", ()))
        pid, held = self._held
        held = held if pid == os.getpid() else {}
        kept = {key: held[key] if key in held else self._read(key) for key in (window, ahead) if key}
        self._held = (os.getpid(), kept)
        return kept[window]

    def _read(self, indices: Sequence[int]) -> _WindowReads:
        """Start reading the encoded frames that samples ``indices`` need, every camera at once (on S3
        the later ones arrive while the first decodes), each row once, contiguous rows as one range."""
        positions = self._samples[np.asarray(indices, dtype=np.int64)]
        reads = {}
        for cam in self.camera_keys:
            rows = np.unique(self._window(cam, positions)[0] if cam in self._delta else self._order[positions])
            reads[cam] = _RowReads(rows, self._table()[cam])
        return reads

    def _frames(self, reads: _RowReads, wanted: np.ndarray) -> torch.Tensor:
        """The frames of table rows ``wanted`` decoded (each distinct one once), shaped ``(*wanted.shape, C, H, W)``."""
        unique, inverse = np.unique(wanted, return_inverse=True)
        encoded = reads.encoded(unique)
        if self.decode_device == "cuda" and is_jpeg(encoded[0]):  # nvJPEG decodes JPEG only
            unique_frames = decode_frames_cuda(encoded, self.image_dtype, self.image_size)
            frames = unique_frames[torch.from_numpy(inverse.ravel()).to(unique_frames.device)]
        else:
            frames = decode_frames([encoded[k] for k in inverse.ravel()], self.image_dtype, self.image_size)
        return frames.view(*wanted.shape, *frames.shape[1:])


class _RowReads:
    """The encoded bytes of sorted table ``rows`` of one camera column, being read: every run of
    contiguous rows as one range read (which Deeplake serves from object storage with a few
    whole-object requests, where a list of rows costs about one request per row), the others in one read."""

    def __init__(self, rows: np.ndarray, column: Any) -> None:
        self.rows = rows
        starts = np.flatnonzero(np.r_[True, np.diff(rows) != 1])
        lengths = np.diff(np.r_[starts, len(rows)])
        runs = [(np.arange(a, a + n), column.get_bytes_async(slice(int(rows[a]), int(rows[a]) + int(n))))
                for a, n in zip(starts, lengths) if n > 1]
        single = np.concatenate([np.arange(a, a + n) for a, n in zip(starts, lengths) if n == 1] or [np.zeros(0, int)])
        if len(single):
            runs.append((single, column.get_bytes_async(rows[single].tolist())))
        self._pending, self._bytes = runs, [b""] * len(rows)

    def encoded(self, wanted: np.ndarray) -> list[bytes]:
        """The bytes of rows ``wanted`` (all among ``rows``), waiting for the reads still running."""
        for positions, future in self._pending:
            for k, blob in zip(positions.tolist(), future.result()):
                self._bytes[k] = blob
        self._pending = []
        return [self._bytes[k] for k in np.searchsorted(self.rows, wanted).tolist()]


_WindowReads = dict[str, _RowReads]


def _image_options(image_dtype: str, image_size: tuple[int, int] | None) -> tuple[torch.dtype, tuple[int, int] | None]:
    """The tensor dtype of camera frames, and the (height, width) they are decoded at (None: as stored)."""
    if image_dtype not in IMAGE_DTYPES:
        raise ValueError(f"image_dtype must be one of {sorted(IMAGE_DTYPES)}, not {image_dtype!r}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise ValueError(f"image_size must be (height, width) in pixels, not {image_size!r}")
    return IMAGE_DTYPES[image_dtype], None if image_size is None else (int(image_size[0]), int(image_size[1]))


def _columns(ds: Any, columns: list[str] | None, url: str) -> tuple[list[str], list[str]]:
    """The cameras and the numeric features an item returns: all of the table's, or those ``columns`` names."""
    schema = {column.name: str(column.dtype) for column in ds.schema.columns}
    cameras = [name for name, dtype in schema.items() if dtype.startswith("kind=image")]
    internal = {*INDEX_DTYPES, "task", STATS_COLUMN}
    features = [name for name in schema if name not in cameras and name not in internal]
    if columns is not None:
        unknown = sorted(set(columns) - set(cameras) - set(features))
        if unknown:
            raise ValueError(f"columns {unknown} are not in {url}; it has {sorted(cameras + features)}")
        cameras = [c for c in cameras if c in columns]
        features = [f for f in features if f in columns]
    return cameras, features


def _samples(ds: Any, sorted_episode: np.ndarray, sorted_index: np.ndarray, firsts: np.ndarray,
             episodes: list[int] | None, query: str | None, where: str) -> np.ndarray:
    """Positions (in the sorted order) of the rows that are samples: those of ``episodes`` and ``query``, else all."""
    selected = np.ones(len(sorted_index), dtype=bool)
    if episodes is not None:
        missing = sorted(set(episodes) - set(sorted_episode[firsts].tolist()))
        if missing:
            raise ValueError(f"episodes {missing} are not in {where}")
        selected &= np.isin(sorted_episode, episodes)
    if query is not None:
        selected &= np.isin(sorted_index, _query_index(ds, query))
    return np.flatnonzero(selected)  # positions in the sorted order


def _task_codes(ds: Any, episode: np.ndarray, task_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every row's task text as a code into a few names, without a Python string per row.

    A row's text is its ``task_index``'s name at the revision its episode was ingested, so it is
    constant over a run of rows with the same episode and ``task_index``: the text is read at the
    first row of each run only.
    """
    starts = np.flatnonzero(np.r_[True, (episode[1:] != episode[:-1]) | (task_index[1:] != task_index[:-1])])
    names, codes = np.unique(np.asarray(ds["task"][starts.tolist()], dtype=object), return_inverse=True)
    return names, np.repeat(codes, np.diff(np.r_[starts, len(episode)]))


def _query_index(ds: Any, query: str) -> np.ndarray:
    """The ``index`` values of the rows ``query`` selects (a result's own row numbers are not the table's)."""
    view = ds.query(query)
    if "index" not in {column.name for column in view.schema.columns}:
        raise ValueError("query must return the 'index' column, e.g. SELECT * WHERE ...")
    return np.asarray(view["index"][:], dtype=np.int64)
