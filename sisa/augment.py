"""Seeded image augmentation: random crop with zero padding and horizontal flip.

The draws for an epoch come from one generator of (seed, shard, slice, epoch) and are indexed
by a sample's row in the slice's sorted ids, so a slice retrained after a deletion sees exactly
the crops and flips a from-scratch run on the same ids sees: augmentation keeps exactness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from sisa.seeding import generator


@dataclass(frozen=True)
class Views:
    """One epoch's augmentation of n samples: crop offsets (n, 2) in [0, 2p] (row, column) and flips (n,)."""

    offsets: torch.Tensor
    flips: torch.Tensor


def draw_views(num_samples: int, padding: int, seed: int, shard: int, slice_: int, epoch: int) -> Views:
    """The crops and flips of one epoch, a pure function of its arguments."""
    gen = generator(seed, "augment", shard, slice_, epoch)
    offsets = torch.randint(0, 2 * padding + 1, (num_samples, 2), generator=gen)
    flips = torch.rand(num_samples, generator=gen) < 0.5
    return Views(offsets, flips)


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop each image of x (B, C, H, W), zero-padded by `padding`, at its offset; mirror the flipped ones.

    Output pixel (i, j) of sample b is padded[b, :, dy + i, dx + j], or padded[b, :, dy + i, dx + W-1-j]
    when b is flipped: one gather, so the result has x's shape and dtype.
    """
    if padding == 0 and not bool(flips.any()):
        return x
    b, c, h, w = x.shape
    device = x.device
    offsets, flips = offsets.to(device), flips.to(device)
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
    rows = offsets[:, :1] + torch.arange(h, device=device)  # (B, H)
    cols = torch.arange(w, device=device).expand(b, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[:, 1:]  # (B, W)
    return padded[torch.arange(b, device=device)[:, None, None, None], torch.arange(c, device=device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]
