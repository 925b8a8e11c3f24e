"""The multi-resolution loader: decode each image once, resize it once per eval group, in the workers.

:class:`GroupedDataset` returns one ``uint8`` ``C×S×S`` tensor per :class:`~pipeline.predict.plan.EvalGroup`
for every image: the file is decoded once (RGB), converted to each group's channels
(:func:`pipeline.data.decode.to_channels`, the rule training's dataset uses) and run through each group's
own eval transform. For a single group the pixels are exactly those of
:class:`pipeline.data.dataset.ImageDataset`, so a member predicted in a mixed-resolution ensemble gets the
same numbers as predicted alone.

With an image cache for prediction (``data.cache_dir`` at predict time), each group reads its pixels from
its own cache at the group's image size (or ``data.cache_size``), built once on the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.data.augment import resize_settings, transform_from_dict
from pipeline.data.cache import ImageCache, open_cache
from pipeline.data.decode import load_rgb, to_channels
from pipeline.data.tables import ImageTable
from pipeline.predict.plan import EvalGroup
from pipeline.predict.spec import PredictOptions

__all__ = ["GroupedDataset", "open_group_caches", "make_loader"]


class GroupedDataset(Dataset):
    """``{"images": [one uint8 C×S×S tensor per group], "index": row}`` for each row of a table."""

    def __init__(self, table: ImageTable, groups: Sequence[EvalGroup],
                 caches: Sequence[ImageCache | None] | None = None) -> None:
        self.table = table
        self.groups = list(groups)
        self.transforms = [transform_from_dict(g.transform) for g in self.groups]
        self.caches = list(caches) if caches is not None else [None] * len(self.groups)
        self.cache_rows = [None if c is None else c.rows(table.paths) for c in self.caches]

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rgb: np.ndarray | None = None
        images = []
        for group, transform, cache, rows in zip(self.groups, self.transforms, self.caches, self.cache_rows):
            if cache is not None and rows is not None:
                image = cache.read(int(rows[i]))
            else:
                if rgb is None:
                    rgb = load_rgb(self.table.paths[i], self.table.max_pixels)  # decoded once, whatever the number of groups
                image = to_channels(rgb, group.in_chans)
            out = transform(image=image)["image"]
            if not isinstance(out, torch.Tensor):
                out = torch.from_numpy(np.ascontiguousarray(out).transpose(2, 0, 1))
            images.append(out)
        return {"images": images, "index": i}


def open_group_caches(table: ImageTable, groups: Sequence[EvalGroup], opts: PredictOptions) -> list[ImageCache | None]:
    """Each group's resized-image cache for prediction, or Nones when ``data.cache_dir`` is not set.

    Caches are built on the whole ``table`` (a subset reads its rows by path), so a predict run pointed at
    training's cache folder reuses it when the sizes agree.
    """
    if not opts.image_cache_dir:
        return [None] * len(groups)
    return [open_cache(table, opts.image_cache_dir, opts.image_cache_size or g.image_size, g.in_chans, opts.num_workers,
                       resize_settings(g.transform))  # the group's own interpolation (area, or bilinear for old members)
            for g in groups]


def make_loader(table: ImageTable, groups: Sequence[EvalGroup], caches: Sequence[ImageCache | None],
                opts: PredictOptions, device: torch.device) -> DataLoader:
    """The one pass over ``table``: batches of ``{"images": [B×C×S×S per group], "index": [B]}``."""
    dataset = GroupedDataset(table, groups, caches)
    return DataLoader(dataset, batch_size=opts.batch_size, num_workers=opts.num_workers, shuffle=False,
                      pin_memory=device.type == "cuda")
