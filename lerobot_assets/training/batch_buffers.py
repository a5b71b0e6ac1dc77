"""Shared-memory batch buffers that DataLoader workers refill instead of allocating afresh.

Why: a 480x640 camera frame is 3.7 MB of float32, a batch of 32 samples from three cameras
350 MB. A worker that writes into newly allocated shared memory first faults in every page,
which on the project's VM costs about 1.3 ms per MB, five times what decoding the frame's JPEG
costs (two workers filling fresh batches made 112 samples/s, refilling the same ones 465). So
each worker keeps its buffers and refills one as soon as nobody uses it any more.

Who uses a buffer: the worker (its own tensors on it, counted by the storage's reference count)
and, once the batch was sent, the main process. A buffer leaves the worker inside a
:class:`_Lent` tensor. Pickling it marks the buffer's slot in a small shared flag array; in the
main process, unpickling returns a plain tensor and puts a finalizer on its storage, which lives
as long as any view of it, that clears the flag. A buffer is refilled only when both let go, so
a batch the training loop keeps is never overwritten; when no buffer is free, a new one is
allocated, so nothing ever waits. Outside DataLoader workers buffers are plain memory.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import torch
from torch.utils.data import get_worker_info

#: How many buffers a worker tracks at most; beyond that it allocates unpooled ones (the old way).
CAPACITY = 256
#: A buffer not handed out in this many requests is freed, so that a burst of batches the
#: training loop held does not stay resident (in steady state every buffer cycles much faster).
UNUSED_REQUESTS = 128


def batch_storage(nbytes: int) -> torch.UntypedStorage:
    """Memory for a batch tensor: a reusable shared buffer in a DataLoader worker, else fresh memory."""
    if get_worker_info() is None:
        return torch.UntypedStorage(nbytes)
    return _pool().take(nbytes)


def lend(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` ready to leave the worker: a pooled buffer under it is refilled only after the main process drops it."""
    slot = _pool().slot_of(tensor) if get_worker_info() is not None else None
    if slot is None:
        return tensor
    lent = tensor.as_subclass(_Lent)
    lent.slot = slot
    return lent


class _Lent(torch.Tensor):
    """A tensor on a pooled buffer, on its way to the main process (only ever exists in a worker)."""

    slot: int
    __torch_function__ = torch._C._disabled_torch_function_impl  # results of operations are plain tensors

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        pool = _pool()
        pool.lent[self.slot] = 1
        return _received, (self.as_subclass(torch.Tensor), pool.flags, self.slot)


def _received(tensor: torch.Tensor, flags: torch.Tensor, slot: int) -> torch.Tensor:
    """Runs in the main process while unpickling: the plain tensor, its buffer released when its storage dies."""
    weakref.finalize(tensor.untyped_storage(), _release, flags, slot).atexit = False
    return tensor


def _release(flags: torch.Tensor, slot: int) -> None:
    flags[slot] = 0


class _Pool:
    """One worker's buffers, by slot, and the flags that say which of them the main process holds."""

    def __init__(self) -> None:
        self.flags = torch.zeros(CAPACITY, dtype=torch.uint8).share_memory_()
        self.lent = self.flags.numpy()
        self.buffers: dict[int, torch.UntypedStorage] = {}
        self.sizes: dict[int, int] = {}  # slot -> nbytes, and data pointer -> slot: a batch takes a dozen buffers
        self.slots: dict[int, int] = {}
        self.last_taken: dict[int, int] = {}
        self.requests = 0

    def _idle(self, slot: int) -> bool:
        # The count first: the pickler sets the flag before it drops its reference to the batch.
        # ``_storage_Use_Count`` counts tensors and storages on the buffer; 1 is the pool's own.
        return torch._C._storage_Use_Count(self.buffers[slot]._cdata) == 1 and not self.lent[slot]

    def take(self, nbytes: int) -> torch.UntypedStorage:
        """The most recently used idle buffer of ``nbytes`` (the others age out), else a new one."""
        self.requests += 1
        stale = [slot for slot, last in self.last_taken.items() if self.requests - last > UNUSED_REQUESTS]
        for slot in stale:
            if self._idle(slot):
                del self.slots[self.buffers[slot].data_ptr()], self.buffers[slot], self.sizes[slot]
                del self.last_taken[slot]
        fits = [slot for slot, size in self.sizes.items() if size == nbytes and self._idle(slot)]
        if fits:
            slot = max(fits, key=self.last_taken.__getitem__)
            self.last_taken[slot] = self.requests
            return self.buffers[slot]
        buffer = torch.UntypedStorage._new_shared(nbytes)  # shared memory, as default_collate allocates
        free = next((slot for slot in range(CAPACITY) if slot not in self.buffers), None)
        if free is not None:
            self.buffers[free], self.sizes[free], self.last_taken[free] = buffer, nbytes, self.requests
            self.slots[buffer.data_ptr()] = free
        return buffer

    def slot_of(self, tensor: torch.Tensor) -> int | None:
        return self.slots.get(tensor.untyped_storage().data_ptr())


_current: tuple[int, _Pool] | None = None  # (pid, pool)


def _pool() -> _Pool:
    """This process's pool (by pid: a process forked from a worker never uses its parent's)."""
    global _current
    if _current is None or _current[0] != os.getpid():
        _current = (os.getpid(), _Pool())
    return _current[1]
