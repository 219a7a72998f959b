"""Encoders: a frozen module (a pretrained backbone) that turns samples into what constituents take.

With `sisa.trainable = "head"` every constituent is a head trained on the backbone's features,
which are computed once per sample rather than once per epoch, shard and slice. Exactness then
needs a sample's features to be a pure function of the sample: a deletion retrains heads on the
stored features of what remains, and a run trained from scratch without the deleted ids
extracts them again from a different set of samples. CPU matrix kernels pick their blocking by
the number of rows in a batch, so the same sample can come out a few ulps apart in a batch of 33
and in one of 64; `encode_inputs` therefore runs batches of exactly ENCODE_BATCH rows, padding
the last one with zeros, which makes each row's result independent of its neighbours. Prediction
needs no such guarantee (a few ulps change no trained weight) and skips the padding, so that
predicting one sample runs the backbone on one sample.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sisa.data import SampleTable
from sisa.training import deterministic

ENCODE_BATCH = 256
"""Rows of every batch an encoder runs (the last one padded): fixed so that features do not depend on batching."""


@torch.no_grad()
def encode_inputs(encoder: nn.Module, x: torch.Tensor, fixed_batches: bool = True) -> torch.Tensor:
    """The encoder's outputs for inputs x (n, *shape), in eval mode, one row per input.

    With `fixed_batches` each row depends on its input alone (see the module docstring); without,
    the last batch is not padded (for prediction). The encoder's mode is restored afterwards.
    """
    was_training = encoder.training
    encoder.eval()
    device = next(iter(encoder.parameters()), torch.zeros(0)).device
    out = []
    try:
        with deterministic(device):
            for batch in x.split(ENCODE_BATCH):
                n = len(batch)
                if n < ENCODE_BATCH and fixed_batches:
                    batch = torch.cat([batch, batch.new_zeros(ENCODE_BATCH - n, *batch.shape[1:])])
                out.append(encoder(batch.to(device))[:n].float().cpu())
    finally:
        encoder.train(was_training)
    if not out:
        return torch.zeros(0)
    return torch.cat(out)


def encode(encoder: nn.Module, table: SampleTable, sample_ids: np.ndarray | None = None) -> SampleTable:
    """The encoder's features of `sample_ids` (default every sample) as a SampleTable.

    Ids (or string keys), labels and class names are those of `table`; each sample is its
    features, float32, of the encoder's output shape. Inputs are materialised a few batches at a
    time, so a large table of images never has to fit in memory as float32 at once.
    """
    ids = table.ids if sample_ids is None else np.sort(np.asarray(sample_ids, np.int64))
    parts = []
    for start in range(0, len(ids), 16 * ENCODE_BATCH):
        x, _ = table.tensors(ids[start : start + 16 * ENCODE_BATCH])
        parts.append(encode_inputs(encoder, x))
    if not parts:
        raise ValueError("nothing to encode: the table holds no samples")
    features = torch.cat(parts).numpy()
    labels = table.labels[table.positions(ids)]
    if table.keys is not None:
        return SampleTable.from_numpy(features, labels, keys=table.keys_of(ids), class_names=table.class_names)
    return SampleTable.from_numpy(features, labels, sample_ids=ids, class_names=table.class_names)
