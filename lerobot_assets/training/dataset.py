"""PyTorch access to a snapshot: LeRobotDataset-style items read from a tagged Deeplake table.

torch is an optional dependency of the package, so only this module imports it.

Why it is fast: the small numeric columns of the snapshot are read once, column by column, into
numpy at construction, so building an item's telemetry, windows and padding masks is array
indexing. Only camera frames are read per batch: their encoded JPEG bytes, fetched in one
Deeplake call per camera for the whole batch (``__getitems__``, which the DataLoader uses; all
cameras requested at once, so that reads overlap decoding), or per window of batches with
:class:`ReadAheadBatches` (contiguous rows as range reads: a few requests on S3), each distinct
frame then decoded once in the worker straight into one tensor per camera (float32, or uint8, optionally at a reduced
size through libjpeg-turbo's DCT scaling), in a shared-memory buffer
the worker refills once the training loop has dropped the batch (:mod:`batch_buffers`), which
:func:`collate` hands to the main process without another copy. The Deeplake dataset is opened
lazily in each process, so the object pickles cheaply for ``spawn`` workers and no handle is
shared across a ``fork``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from lerobot_assets.core.errors import TableError
from lerobot_assets.core.lerobot import stats
from lerobot_assets.core.lerobot.meta import INDEX_DTYPES
from lerobot_assets.core.media.codec import decode_rgb, is_jpeg
from lerobot_assets.core.table.access import open_tag
from lerobot_assets.core.table.metadata import table_metadata
from lerobot_assets.runtime.home import Home
from lerobot_assets.runtime.registry import registry_of
from lerobot_assets.training.batch_buffers import batch_storage, lend

log = logging.getLogger(__name__)

#: LeRobot's default tolerance for delta_timestamps that are not multiples of 1/fps.
TOLERANCE_S = 1e-4
#: Camera frame types an item can hold: LeRobot's float32 in [0, 1] (the default), or the decoded uint8.
IMAGE_DTYPES = {"float32": torch.float32, "uint8": torch.uint8}


@dataclass(frozen=True)
class SnapshotInfo:
    """Which data a run trained on: log these to reload exactly the same rows."""

    dataset: str
    tag: str
    version: str
    table: str


def decode_frames(
    encoded: Sequence[bytes], dtype: torch.dtype = torch.float32, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Frames as one ``(N, C, H, W)`` tensor: float32 in [0, 1] like LeRobot's decoded video frames, or uint8.

    uint8 holds the decoded pixels as they are (4x less memory to write, pin and transfer);
    ``uint8_frames.float() / 255`` equals the float32 frames exactly. ``size`` (height, width)
    decodes at that reduced resolution (:func:`~lerobot_assets.core.media.codec.decode_rgb`).

    Inside a DataLoader worker the tensor lies in one of the worker's reusable shared-memory
    buffers, so that :func:`collate` can hand it to the main process without stacking (copying)
    the largest part of a batch again.
    An object repeated in ``encoded`` (a frame clamped at an episode edge) is decoded once.
    """
    first = decode_rgb(encoded[0], size=size)
    shape = (len(encoded), 3, *first.shape[:2])
    out = torch.empty(0, dtype=dtype).set_(batch_storage(math.prod(shape) * dtype.itemsize), 0, shape)
    decoded: dict[int, int] = {}
    for k, blob in enumerate(encoded):
        if id(blob) in decoded:
            out[k].copy_(out[decoded[id(blob)]])
            continue
        chw = torch.from_numpy(first if k == 0 else decode_rgb(blob, size=size)).permute(2, 0, 1)
        if dtype == torch.uint8:
            out[k].copy_(chw)
        else:
            torch.div(chw, 255, out=out[k])  # as LeRobot: float32(x) / 255
        decoded[id(blob)] = k
    return out


def _batch_tensor(values: np.ndarray) -> torch.Tensor:
    """``values`` (one column of a batch, a row per sample) as one tensor, in a reusable batch buffer.

    Items hold its rows, so :func:`collate` passes the column on whole: no per-item tensors to
    build and stack, and in a DataLoader worker no fresh shared memory per column and batch.
    """
    out = torch.empty(0, dtype=torch.from_numpy(values[:0]).dtype)
    return out.set_(batch_storage(values.nbytes), 0, values.shape).copy_(torch.from_numpy(values))


def decode_frames_cuda(
    encoded: Sequence[bytes], dtype: torch.dtype = torch.float32, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """:func:`decode_frames` with nvJPEG on the GPU (torchvision, imported only here): the batch comes out on CUDA.

    nvJPEG has no DCT scaling, so ``size`` is a full decode then an area resize on the GPU
    (torch's adaptive average: the box filter when the ratio is a whole number).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in encoded]
    frames = torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda"))
    if size is not None and tuple(frames.shape[-2:]) != size:
        frames = torch.nn.functional.interpolate(frames.float(), size=size, mode="area").round_().to(torch.uint8)
    return frames if dtype == torch.uint8 else frames.float().div_(255)


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


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate``, except that values already built as one batch tensor (camera frames,
    telemetry columns, padding masks) are passed on as is.

    Use it as the DataLoader's ``collate_fn``: with 480x640 cameras, stacking the frames again
    costs about as much as decoding them.
    """
    whole = {key: lend(batch) for key in items[0] if (batch := _whole_batch([item[key] for item in items])) is not None}
    rest = default_collate([{key: value for key, value in item.items() if key not in whole} for item in items])
    return {key: whole[key] if key in whole else rest[key] for key in items[0]}


def _whole_batch(values: list[Any]) -> torch.Tensor | None:
    """The tensor whose consecutive rows ``values`` are, if together they fill one storage exactly."""
    first = values[0]
    if not isinstance(first, torch.Tensor):
        return None
    storage, size = first.untyped_storage(), first.numel() * first.element_size()
    for k, value in enumerate(values):
        if not (
            isinstance(value, torch.Tensor)
            and value.is_contiguous()
            and value.shape == first.shape
            and value.dtype == first.dtype
            and value.untyped_storage().data_ptr() == storage.data_ptr()
            and value.storage_offset() * value.element_size() == k * size
        ):
            return None
    if storage.nbytes() != size * len(values):
        return None
    return torch.empty(0, dtype=first.dtype).set_(storage, 0, (len(values), *first.shape))


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
        if image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image_dtype must be one of {sorted(IMAGE_DTYPES)}, not {image_dtype!r}")
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise ValueError(f"image_size must be (height, width) in pixels, not {image_size!r}")
        self.image_dtype = IMAGE_DTYPES[image_dtype]
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.decode_device = _decode_device(decode_device)
        url = registry_of(Home.at(home, tables)).dataset_source(dataset).table
        ds = open_tag(url, tag)
        self.snapshot = SnapshotInfo(dataset, tag, ds.version, url)
        metadata = table_metadata(ds)
        schema = {column.name: str(column.dtype) for column in ds.schema.columns}
        cameras = [name for name, dtype in schema.items() if dtype.startswith("kind=image")]
        internal = {*INDEX_DTYPES, "task", stats.STATS_COLUMN}
        features = [name for name in schema if name not in cameras and name not in internal]
        if columns is not None:
            unknown = sorted(set(columns) - set(cameras) - set(features))
            if unknown:
                raise ValueError(f"columns {unknown} are not in {url}; it has {sorted(cameras + features)}")
            cameras = [c for c in cameras if c in columns]
            features = [f for f in features if f in columns]
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

        selected = np.ones(len(index), dtype=bool)
        if episodes is not None:
            missing = sorted(set(episodes) - set(sorted_episode[firsts].tolist()))
            if missing:
                raise ValueError(f"episodes {missing} are not in {url} at tag {tag!r}")
            selected &= np.isin(sorted_episode, episodes)
        if query is not None:
            selected &= np.isin(sorted_index, _query_index(ds, query))
        self._samples = np.flatnonzero(selected)  # positions in the sorted order
        self.episodes: list[int] = np.unique(sorted_episode[self._samples]).tolist()
        # each episode's first row in the table, for the stats (read when asked for: :attr:`stats`)
        self._first_rows = (sorted_episode[firsts], self._order[firsts])
        self._ds: Any = None
        self._ds_pid = -1
        self._held: tuple[int, dict[tuple[int, ...], _WindowReads]] = (0, {})  # (pid, reads by window)

    def __len__(self) -> int:
        return len(self._samples)

    @functools.cached_property
    def stats(self) -> stats.Stats | None:
        """LeRobot-style normalization stats of the snapshot's episodes, stored with the rows at this
        tag (None if the ingest stored none). Read and aggregated at first use, not at construction:
        that reads every episode's stats (~10 KB of JSON each)."""
        episodes, rows = self._first_rows
        return stats.load_stats(self._table(), dict(zip(episodes.tolist(), rows.tolist())))

    @property
    def num_frames(self) -> int:
        return len(self._samples)

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
        columns = {key: _batch_tensor(values[windows.get(key, rows)]) for key, values in self._values.items()}
        columns.update({key: _batch_tensor(pad) for key, pad in pads.items()})
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


class ReadAheadBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of sample indices, shuffled or in order, grouped in windows that each worker reads ahead.

    Give it to the DataLoader as ``batch_sampler``, with the same ``num_workers``. The DataLoader
    deals batches to its workers in turn; this sampler orders them so that each worker gets all
    the batches of a window in a row, and tells it its next window. A :class:`SnapshotDataset`
    worker reads a whole window's encoded frames at once and starts reading its next window while
    it decodes the current one. Worth it where a read waits on the network (an S3 snapshot).

    By default a window is one batch of a full shuffle. With ``block`` > 1 the samples are
    shuffled in blocks of ``block`` consecutive ones (consecutive frames of an episode), and a
    window holds ``window`` samples (a multiple of ``batch_size``) from ``window // block`` blocks,
    shuffled among themselves and cut into batches: on object storage a window is then a few
    large range reads instead of about one request per frame and camera (measured on S3:
    ``docs/benchmarks.md``). The price is a less mixed batch (frames from at most
    ``window // block`` places); every sample still comes once per epoch, and items never change:
    a batch whose window a worker does not hold is simply read then.
    """

    def __init__(self, size: int, batch_size: int, num_workers: int, shuffle: bool = True, drop_last: bool = False,
                 generator: torch.Generator | None = None, window: int | None = None, block: int = 1) -> None:
        if block < 1 or (window is not None and window < batch_size):
            raise ValueError(f"block must be >= 1 and window >= batch_size ({batch_size}), not {block} and {window}")
        self.size, self.batch_size, self.step = size, batch_size, max(1, num_workers)
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator
        self.batches_per_window, self.block = (window or batch_size) // batch_size, block

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_last else math.ceil(self.size / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        blocks = torch.arange(self.size).split(self.block)
        if self.shuffle:
            blocks = [blocks[k] for k in torch.randperm(len(blocks), generator=self.generator).tolist()]
        batches = list(torch.cat(blocks).split(self.batch_size)) if blocks else []
        batches = batches[: len(self)]
        # As many windows as the batches need, a multiple of the workers, with as many batches each as can be:
        # every worker then gets the same number of batches (or one fewer) and stays in step with the DataLoader.
        count = min(len(batches), math.ceil(len(batches) / self.batches_per_window / self.step) * self.step)
        windows = []
        for group in np.array_split(np.arange(len(batches)), count) if count else []:
            members = [batches[k] for k in group.tolist()]
            samples = torch.cat(members)
            if self.shuffle:
                samples = samples[torch.randperm(len(samples), generator=self.generator)]
            windows.append((samples.tolist(), samples.split([len(m) for m in members])))
        streams = []
        for worker in range(self.step):
            mine = windows[worker :: self.step]
            streams.append([_Batch(batch.tolist(), samples, mine[k + 1][0] if k + 1 < len(mine) else [])
                            for k, (samples, cut) in enumerate(mine) for batch in cut])
        for round_ in range(max(map(len, streams), default=0)):
            yield from (stream[round_] for stream in streams if round_ < len(stream))


class _Batch(list):
    """A batch of indices that also names its window's indices and the worker's next window (pickled with it)."""

    def __init__(self, indices: list[int], window: list[int], ahead: list[int]) -> None:
        super().__init__(indices)
        self.window, self.ahead = window, ahead


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
