"""Decoding encoded images (PNG, JPEG, or anything Pillow reads) into one uint8 array (N, C, H, W).

Images are grayscale (C = 1) when every one of them is, else RGB (C = 3, grayscale ones
repeated): a mixed folder neither loses colour nor fails. Every image must have the size of the
first; an image that does not decode or has another size is refused naming its file or row.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from orchestration.datasets.base import DatasetError

if TYPE_CHECKING:
    from orchestration.datasets.tables import Rows

_GRAY = ("1", "L", "LA", "I", "I;16", "F")


def is_image_column(t: pa.DataType) -> bool:
    """Binary values, or a struct with a binary `bytes` field (the Hugging Face datasets Image layout)."""
    if pa.types.is_struct(t):
        index = t.get_field_index("bytes")
        return index >= 0 and is_image_column(t.field(index).type)
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def decode_images(column: pa.Array, name: str, rows: Rows) -> np.ndarray:
    """Decode every image of `column` into (N, C, H, W) uint8.

    Raises:
        DatasetError: an image is missing, does not decode, or differs in size from the first.
    """
    if pa.types.is_struct(column.type):
        column = column.field("bytes")
    if column.null_count:
        i = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DatasetError(f"{rows.where(i)}: no image in column {name!r}; every row needs PNG or JPEG bytes")
    column = column.cast(pa.large_binary())
    offsets = np.frombuffer(column.buffers()[1], np.int64, count=len(column) + 1, offset=column.offset * 8)
    data = memoryview(column.buffers()[2] or b"")
    out: np.ndarray | None = None
    for i in range(len(column)):
        image = _decode(data[offsets[i] : offsets[i + 1]], rows.where(i), name)
        if out is None:
            channels = 1 if image.ndim == 2 else 3
            out = np.empty((len(column), channels, *image.shape[:2]), np.uint8)
        if image.shape[:2] != out.shape[2:]:
            raise DatasetError(f"{rows.where(i)}: image is {image.shape[1]}x{image.shape[0]} pixels, but {rows.where(0)} "
                               f"is {out.shape[3]}x{out.shape[2]}; every image needs the same size (resize them first)")
        if image.ndim == 3 and out.shape[1] == 1:  # the first colour image: widen what is decoded so far
            out = np.repeat(out, 3, axis=1)
        out[i] = image if image.ndim == 2 else image.transpose(2, 0, 1)  # (H, W) broadcasts over channels
    return out if out is not None else np.zeros((0, 1, 1, 1), np.uint8)


def _decode(data: memoryview, where: str, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            converted = image.convert("L" if image.mode in _GRAY else "RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{where}: cannot decode the image in column {name!r} ({err}); expected PNG or JPEG "
                           "bytes") from None
    return np.asarray(converted)  # (H, W) or (H, W, 3)
