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


@pytest.mark.parametrize("batch_first", [True, False])
def test_after_the_last_row_the_reading_is_the_models_prediction(batch_first):
    torch.manual_seed(0)
    model = RNN(28, 32, 2, 10, batch_first=batch_first).eval()
    images = torch.rand(6, 28, 28)
    reading = lstm_mnist.probs_while_reading(model, images)
    assert reading.shape == (6, 28, 10)
    with torch.no_grad():
        assert torch.equal(reading[:, -1], model(images).softmax(dim=1))
    torch.testing.assert_close(reading.sum(dim=2), torch.ones(6, 28))
    # Row t has read rows 0 to t only: changing the last row changes nothing before it.
    changed = images.clone()
    changed[:, -1] = 1 - changed[:, -1]
    assert torch.equal(lstm_mnist.probs_while_reading(model, changed)[:, :-1], reading[:, :-1])


def figure_inputs(n=120, **kwargs):
    torch.manual_seed(0)
    model = RNN(28, 16, 2, 10, **kwargs).eval()
    images, labels = torch.rand(n, 28, 28), torch.randint(0, 10, (n,))
    return model, lstm_mnist.make_loader(images, labels, lstm_mnist.EVAL_BATCH_SIZE, False)


HISTORY = [{"epoch": 1, "train_loss": 1.0, "train_acc": 50.0, "test_loss": 1.0, "test_acc": 50.0}]


@pytest.mark.figures
def test_every_figure_is_drawn_and_the_gates_come_from_the_cell_by_hand(tmp_path, monkeypatch, capsys):
    model, loader = figure_inputs()
    calls = []
    by_hand = lstm_mnist.lstm_by_hand
    monkeypatch.setattr(lstm_mnist, "lstm_by_hand", lambda *args: calls.append(args) or by_hand(*args))
    paths = lstm_mnist.draw_figures(model, loader, HISTORY, lstm_mnist.DATASETS["mnist"][1], tmp_path, False)
    assert list(paths) == ["predictions", "scores", "curves", "reading", "gates", "mistakes", "memory"]
    printed = capsys.readouterr().out.splitlines()
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"saved {path}" in printed
    assert len(calls) == 1 and calls[0][0] is model.lstm  # gates.png, computed by hand


@pytest.mark.figures
def test_bidirectional_skips_reading_png_says_why_and_leaves_no_earlier_one(tmp_path, capsys):
    model, loader = figure_inputs(bidirectional=True, batch_first=False)
    (tmp_path / "reading.png").write_bytes(b"an earlier run's reading.png")
    history = [{**HISTORY[0], "val_loss": 1.0, "val_acc": 50.0, "label_smoothing": 0.1}]  # --val-size's curves too
    for row in history:
        del row["test_loss"], row["test_acc"]
    paths = lstm_mnist.draw_figures(model, loader, history, lstm_mnist.DATASETS["fashion-mnist"][1], tmp_path, False)
    printed = capsys.readouterr().out
    assert "reading.png skipped" in printed and "--bidirectional" in printed and "removed the earlier run's" in printed
    assert "reading" not in paths and not (tmp_path / "reading.png").exists()
    assert (tmp_path / "gates.png").exists() and (tmp_path / "mistakes.png").exists()


def test_mistakes_png_copes_with_no_mistakes(tmp_path):
    images, labels = torch.rand(30, 28, 28), torch.arange(30) % 10
    probs = torch.nn.functional.one_hot(labels, 10).float()  # every answer right, with certainty
    lstm_mnist.plot_mistakes(images, labels, probs, lstm_mnist.DATASETS["mnist"][1], tmp_path / "mistakes.png")
    assert (tmp_path / "mistakes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.figures
def test_a_test_set_smaller_than_the_figures_is_drawn_too(tmp_path):
    model, loader = figure_inputs(n=3)  # --max-batches 1 --batch-size 3 tests on 3 images
    paths = lstm_mnist.draw_figures(model, loader, HISTORY, lstm_mnist.DATASETS["mnist"][1], tmp_path, False)
    assert all(path.exists() for path in paths.values()) and "reading" in paths
