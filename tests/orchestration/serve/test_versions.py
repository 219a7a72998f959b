"""A served version predicts from all its constituents at once, naming its classes when the data set has them;
a new version brings only the constituents that changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from orchestration.serve.versions import NoVersionError, ServedEnsemble, VersionBoard, reusable


def _constant(logits: list[float]) -> nn.Module:
    """A model whose output is `logits` whatever the input: Linear with zero weights and these biases."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, len(logits)))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor(logits))
    return model


def test_served_ensemble_answers_its_version_vote_mean_posterior_and_class_names():
    """Logits [0, 0] give posteriors (0.5, 0.5) and argmax 0 (ties to the smallest class); [0, ln 3] give
    (1/4, 3/4) and 1. Mean posterior (0.375, 0.625): label 1. Vote: one each, the tie goes to 0."""
    models = {0: _constant([0.0, 0.0]), 1: _constant([0.0, float(np.log(3))])}
    ensemble = ServedEnsemble({"number": 7}, models, (1, 2), "vote", ["cat", "dog"])
    answer = ensemble.predict(np.zeros((3, 2), np.float32))
    assert answer["version"] == 7 and answer["labels"] == [0, 0, 0] and answer["classes"] == ["cat"] * 3
    assert np.allclose(answer["probabilities"], [[0.375, 0.625]] * 3)
    mean = ServedEnsemble({"number": 7}, models, (1, 2), "mean").predict(np.zeros((1, 2), np.float32))
    assert mean["labels"] == [1] and "classes" not in mean


def test_a_version_without_constituents_refuses_to_predict():
    with pytest.raises(NoVersionError, match="version 3 has no model: every training sample was deleted"):
        ServedEnsemble({"number": 3}, {}, (2,), "vote").predict(np.zeros((1, 2), np.float32))


def test_a_new_version_reuses_exactly_the_constituents_whose_checkpoint_key_is_unchanged():
    models = {0: _constant([0.0, 1.0]), 1: _constant([1.0, 0.0]), 2: _constant([0.5, 0.5])}
    current = ServedEnsemble({"number": 4, "keys": {0: "a", 1: "b", 2: "c"}}, models, (1, 2), "vote")
    kept = reusable(current, {0: "a", 1: "b2"})  # shard 1 retrained, shard 2 emptied by the deletion
    assert list(kept) == [0] and kept[0] is models[0]
    assert reusable(None, {0: "a"}) == {}


@pytest.mark.ray
def test_the_board_keeps_every_constituent_of_the_current_version_and_takes_only_the_new_ones(ray_cluster):
    import ray

    board = ray.remote(VersionBoard).options(num_cpus=0).remote()
    first = {0: {"w": torch.zeros(2)}, 1: {"w": torch.ones(2)}}
    ray.get(board.publish.remote({"number": 0, "keys": {0: "a", 1: "b"}}, first))
    _, refs_before = ray.get(board.follow.remote("r", None, None))
    ray.get(board.publish.remote({"number": 1, "keys": {0: "a", 1: "b2"}}, {1: {"w": torch.full((2,), 2.0)}}))
    info, refs = ray.get(board.follow.remote("r", None, 0))

    assert info["number"] == 1 and ray.get(board.current.remote())["keys"] == {0: "a", 1: "b2"}
    assert refs[0][0] == refs_before[0][0], "the unchanged constituent is the same object"
    assert torch.equal(ray.get(refs[1][0])["w"], torch.full((2,), 2.0))
    with pytest.raises(ray.exceptions.RayTaskError, match=r"version 2 lacks the weights of shard\(s\) \[0\]"):
        ray.get(board.publish.remote({"number": 2, "keys": {0: "a3", 1: "b2"}}, {}))
    assert ray.get(board.current.remote())["keys"] == {0: "a", 1: "b2"}, "a refused version changes nothing"
    ray.kill(board)
