"""`unlearn pretrain`: train a backbone on the public data a run declares and write it for `model.backbone`.

The network is model.name, as a full-network run would build it, trained on the public samples only
(data.public_fraction and data.public_ids; see public.py) as one shard of one slice by the SISA
trainer with the `[pretrain]` recipe, so the same loop, schedules, augmentation and label smoothing
apply. Its classifier is then removed and the rest written with the model settings that build it
and the digest of the samples it learnt from (see backbone.py), so that a run can check its frozen
backbone saw non-deletable data only. The same config file serves `unlearn pretrain` and then
`unlearn train`: pretrain ignores model.backbone and sisa.*.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from orchestration.config import RunConfig
from orchestration.datasets import load_dataset
from orchestration.datasets.cache import bypassed, purged_rows, train_cache
from orchestration.frozen.backbone import strip_classifier, write_backbone
from orchestration.frozen.public import describe_public, public_ids
from orchestration.models import build_model
from sisa import SisaRun, aggregate
from sisa.ensemble import OnSlice
from sisa.ledger import ids_digest_hex


@dataclass(frozen=True)
class PretrainReport:
    """What `unlearn pretrain` trained and wrote."""

    path: Path
    sha256: str
    samples: int
    """Public samples the backbone was trained on."""
    samples_epochs: int
    seconds: float
    test_accuracy: float
    """Of the pretrained classifier (backbone and its classifier) on the test split."""
    classifier: str
    """Name of the layer removed from the network (empty when it had no Linear layer)."""


def pretrain(config: RunConfig, out: str | Path, on_slice: OnSlice = None) -> PretrainReport:
    """Train model.name on the declared public data with config.pretrain and write the backbone to `out`.

    Raises:
        ValueError: `out` exists or its folder does not, no public data is declared, or the network
            does not build for the data.
    """
    out = Path(out)
    if out.exists():
        raise ValueError(f"--out {out} exists; runs made with it would refuse a changed file: give a new file name")
    if not out.resolve().parent.is_dir():
        raise ValueError(f"--out {out}: folder {out.resolve().parent} does not exist")
    train, test = load_dataset(config.data)
    cache = train_cache(config.data)
    if cache is not None and purged_rows(cache):
        # Other runs' deletions removed rows from the cached copy; one of them may be public here.
        with bypassed():
            train, test = load_dataset(config.data)
    public = public_ids(config.data, train)
    if not public.size:
        raise ValueError("unlearn pretrain trains on the data the run declares public (non-deletable): set "
                         "data.public_fraction or data.public_ids")
    num_classes = max(train.num_classes, test.num_classes)
    factory = functools.partial(build_model, config.model, train.sample_shape, num_classes)
    factory()  # a network that does not build fails here, before any training
    config.pretrain.check_sample_shape(train.sample_shape)
    with tempfile.TemporaryDirectory(prefix="unlearn-pretrain-") as tmp:
        run = SisaRun(tmp, train.take(public), factory, config.pretrain, config.seed, fingerprint="pretrain")
        began = time.perf_counter()
        reports = run.train(on_slice)
        seconds = time.perf_counter() - began
        (_, model), = run.constituents()
        x, labels = test.tensors()
        accuracy = (aggregate(run.logits(x), "vote") == labels).double().mean().item()
    classifier = strip_classifier(model)
    record = {"sha256": ids_digest_hex(public), "samples": int(public.size), "declared_by": describe_public(config.data),
              "data": config.data.name}
    sha256 = write_backbone(out, model, classifier, config.model, train.sample_shape, num_classes, record,
                            {**dataclasses.asdict(config.pretrain), "seed": config.seed})
    return PretrainReport(out, sha256, int(public.size), sum(r.samples_epochs for r in reports), seconds, accuracy,
                          classifier)
