"""Batches grouped in windows a worker reads ahead (:class:`ReadAheadBatches`), for snapshots on object storage.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch



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
