"""Camera frames into batch tensors: JPEG/PNG decoding (CPU, or nvJPEG on CUDA) into one tensor per
camera, in a shared-memory buffer a worker refills (:mod:`~lerobot_assets.training.batch_buffers`),
and :func:`collate`, which hands those tensors to the main process without another copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from lerobot_assets.core.media.codec import decode_rgb
from lerobot_assets.training.batch_buffers import batch_storage, lend

#: Camera frame types an item can hold: LeRobot's float32 in [0, 1] (the default), or the decoded uint8.
IMAGE_DTYPES = {"float32": torch.float32, "uint8": torch.uint8}


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


def batch_tensor(values: np.ndarray) -> torch.Tensor:
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
