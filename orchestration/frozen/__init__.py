"""Frozen backbones: SISA over per-shard heads or adapters on a pretrained, frozen network.

backbone.py loads a backbone (model.name without its classifier, weights from a file) and hashes
it into the run; public.py names the training samples a run declares public (non-deletable), the
only ones `unlearn pretrain` (pretrain.py) trains a backbone on; constituents.py builds what each
shard trains (the whole network, a head, or LoRA adapters from adapters.py and a head);
features.py stores head mode's backbone features, which every deletion purges and the audit checks.
"""
