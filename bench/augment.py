"""Training-time augmentations that run on whole batches on the data's own device.

``AUGMENTATIONS[name](x, generator)`` takes a normalised NCHW batch and a ``torch.Generator``
on the same device and returns an augmented batch of the same shape and dtype; sample i of
the output comes from sample i of the input, so labels stay aligned. Everything is one
vectorised gather per batch: no per-image Python loop, no host round trip, and the result is
a pure function of the batch and the generator state.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

CROP_PADDING = 4


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """Random crop back to the input size from a zero-padded copy, then a random horizontal
    flip with probability 1/2 — the standard CIFAR recipe (He et al. 2016, arXiv 1512.03385).

    The pad value is 0 in *normalised* space, i.e. the per-channel mean colour, where
    torchvision's ``RandomCrop(32, padding=4)`` on raw images pads black; the difference only
    affects the border pixels' value and is immaterial for accuracy.
    Offsets are uniform in [0, 2*padding] per axis, like ``RandomCrop``.
    """
    if x.dim() != 4:
        raise ValueError(f"crop_flip expects an NCHW batch, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    dev = x.device
    dy = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator, device=dev)
    flip = torch.randint(0, 2, (b, 1, 1), generator=generator, device=dev).bool()
    rows = torch.arange(h, device=dev).view(1, h, 1) + dy                       # (b, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    cols = torch.where(flip, (w - 1) - cols, cols) + dx                          # (b, 1, w)
    wp = w + 2 * padding
    index = (rows * wp + cols).view(b, 1, h * w).expand(b, c, h * w)
    padded = F.pad(x, (padding, padding, padding, padding))
    return padded.flatten(2).gather(2, index).view(b, c, h, w)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "crop-flip": crop_flip,
}
