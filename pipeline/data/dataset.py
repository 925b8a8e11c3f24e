"""The torch ``Dataset`` over an image table: decode (or read the cache), transform, carry the row index."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.decode import load_image
from pipeline.data.tables import ImageTable

if TYPE_CHECKING:
    from pipeline.data.cache import ImageCache

__all__ = ["ImageDataset"]


class ImageDataset(Dataset):
    """Decode, transform and return ``{"image", "target", "index"}`` for one row of a table.

    ``index`` is the row's position in the table, carried through the batch so predictions made in
    any order (workers, DDP ranks) can be put back in table order. With a ``cache``
    (:mod:`pipeline.data.cache`), images are read pre-resized from it instead of being decoded.
    """

    def __init__(self, table: ImageTable, transform: Callable[..., Any] | None, in_chans: int = 3,
                 cache: ImageCache | None = None) -> None:
        self.table = table
        self.transform = transform
        self.in_chans = in_chans
        self.cache = cache
        self.cache_rows = None if cache is None else cache.rows(table.paths)
        if cache is not None and cache.in_chans != in_chans:
            raise ValueError(f"The image cache {cache.array_path} holds {cache.in_chans}-channel images, not {in_chans}")

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.cache is None or self.cache_rows is None:
            image = load_image(self.table.paths[i], self.in_chans, self.table.max_pixels)
        else:
            image = self.cache.read(int(self.cache_rows[i]))
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        tensor = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1))
        labels = self.table.labels
        if labels is None:
            target: Any = -1
        elif labels.dtype.kind in "iub":  # one class per image: its index
            target = int(labels[i])
        else:  # multi-label 0/1 rows, regression and ordinal values
            target = torch.as_tensor(labels[i], dtype=torch.float32)
        return {"image": tensor, "target": target, "index": i}
