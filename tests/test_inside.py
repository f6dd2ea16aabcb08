"""Inside the LSTM: the cell written out by hand equals nn.LSTM, and the figures drawn from it."""

import inspect

import pytest
import torch
from conftest import lstm_mnist

from lstm_mnist import RNN


@pytest.mark.parametrize("kwargs", [
    {},  # the tutorial's RNN(28, 128, 2, 10)
    {"bias": False},
    {"n_layer": 3},
    {"batch_first": False},
    {"bidirectional": True},
    {"n_layer": 3, "bidirectional": True, "bias": False, "batch_first": False},
    {"dropout": 0.5},  # eval mode: nn.LSTM's dropout is off, and the hand-written cell has none
], ids=lambda kwargs: "-".join(f"{key}={value}" for key, value in kwargs.items()) or "default")
def test_the_cell_by_hand_computes_what_nn_lstm_computes(kwargs):
    torch.manual_seed(0)
    kwargs = {"n_layer": 2, **kwargs}
    model = RNN(28, 128, kwargs.pop("n_layer"), 10, **kwargs).eval()
    images = torch.rand(5, 28, 28)
    inputs = images if model.lstm.batch_first else images.transpose(0, 1)
    with torch.no_grad():
        output, (h_n, c_n) = model.lstm(inputs)
        by_hand, (h_n_by_hand, c_n_by_hand), gates = lstm_mnist.lstm_by_hand(model.lstm, inputs)
    assert by_hand.shape == output.shape and h_n_by_hand.shape == h_n.shape
    torch.testing.assert_close(by_hand, output, atol=1e-5, rtol=0)
    torch.testing.assert_close(h_n_by_hand, h_n, atol=1e-5, rtol=0)
    torch.testing.assert_close(c_n_by_hand, c_n, atol=1e-5, rtol=0)
    # One dict of gates per layer and direction, each (batch, 28 rows, hidden), gates in (0, 1).
    num_directions = 2 if model.bidirectional else 1
    assert len(gates) == len(h_n) == model.lstm.num_layers * num_directions
    for k, step in enumerate(gates):
        assert set(step) == {"i", "f", "g", "o", "c", "h"}
        assert all(value.shape == (5, 28, 128) for value in step.values())
        assert all(0 < step[gate].min() and step[gate].max() < 1 for gate in "ifo")
        last_row = 0 if k % num_directions else -1  # the backward direction ends at row 0
        torch.testing.assert_close(step["c"][:, last_row], c_n[k], atol=1e-5, rtol=0)


def test_the_cell_by_hand_reads_nn_lstms_own_parameters_by_name():
    source = inspect.getsource(lstm_mnist.lstm_cell)
    for name in ("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l"):
        assert f'getattr(lstm, f"{name}{{layer}}{{suffix}}")' in source
    # Change one of nn.LSTM's weights: the hand-written cell must follow it.
    torch.manual_seed(0)
    model = RNN(28, 16, 2, 10).eval()
    images = torch.rand(2, 28, 28)
    with torch.no_grad():
        model.lstm.weight_hh_l1[0] += 1.0
        torch.testing.assert_close(lstm_mnist.lstm_by_hand(model.lstm, images)[0], model.lstm(images)[0],
                                   atol=1e-5, rtol=0)
