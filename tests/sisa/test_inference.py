"""Inference outputs: batched, in the layout a model opts into, interruptible; training layouts untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sisa.inference import Interrupted, for_inference, outputs


class Viewing(nn.Module):
    """A user's model that flattens with `.view`, which a channels-last activation refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(len(h), -1))


class OptedIn(Viewing):
    channels_last_inference = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_a_model_that_does_not_opt_in_keeps_the_default_layout_so_its_view_still_works():
    model = for_inference(Viewing().train())
    assert not model.training and model.conv.weight.is_contiguous()
    assert outputs(model, torch.randn(5, 1, 6, 6)).shape == (5, 3)


def test_an_opted_in_model_runs_channels_last_in_batches_and_matches_its_default_layout():
    torch.manual_seed(0)
    model, x = OptedIn(), torch.randn(10, 1, 6, 6)
    with torch.no_grad():
        expected = model.eval()(x)
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    got = outputs(for_inference(model), x, batch_size=4)
    assert [len(b) for b in seen] == [4, 4, 2]
    assert all(b.is_contiguous(memory_format=torch.channels_last) for b in seen)
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected)


def test_outputs_stop_before_the_batch_at_which_interrupt_says_so():
    calls = iter([False, False, True])
    with pytest.raises(Interrupted):
        outputs(for_inference(OptedIn()), torch.randn(10, 1, 6, 6), batch_size=4, interrupt=lambda: next(calls))
