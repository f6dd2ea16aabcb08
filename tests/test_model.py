"""The model: shapes as the tutorial documents them, and which time step it classifies from."""

import itertools

import pytest
import torch
from conftest import lstm_mnist

from lstm_mnist import RNN


def hparams(**overrides):
    values = lstm_mnist.model_hparams(lstm_mnist.parse_args([]))
    values.update(overrides)
    return values


def test_logits_are_batch_by_classes_for_a_batch_of_images():
    torch.manual_seed(0)
    model = RNN(28, 128, 2, 10)
    assert model(torch.rand(5, 28, 28)).shape == (5, 10)


@pytest.mark.parametrize("n_layer,bidirectional,batch_first",
                         list(itertools.product([1, 2, 3], [False, True], [True, False])))
def test_state_and_output_shapes_follow_the_tutorials_table(n_layer, bidirectional, batch_first, capsys):
    batch, hidden = 7, 16
    shapes = lstm_mnist.show_shapes(hparams(hidden_dim=hidden, n_layer=n_layer, bidirectional=bidirectional,
                                            batch_first=batch_first), batch)
    num_directions = 2 if bidirectional else 1
    state = (n_layer * num_directions, batch, hidden)  # (num_layers * num_directions, batch, hidden_size)
    assert shapes["h_0"] == shapes["c_0"] == shapes["h_n"] == shapes["c_n"] == state
    if not batch_first:
        assert shapes["input"] == (28, batch, 28)
        assert shapes["output"] == (28, batch, num_directions * hidden)
    else:
        assert shapes["input"] == (batch, 28, 28)
        assert shapes["output"] == (batch, 28, num_directions * hidden)
    assert shapes["logits"] == (batch, 10)
    printed = capsys.readouterr().out
    assert f"h_n    {state}" in printed


def test_show_shapes_flag_prints_the_bidirectional_table_and_exits(capsys):
    result = lstm_mnist.main(["--show-shapes", "--bidirectional", "--n-layer", "3",
                              "--batch-size", "7", "--hidden-dim", "16"])
    lines = capsys.readouterr().out.splitlines()
    assert result["shapes"]["output"] == (7, 28, 32)
    assert any(line.startswith("h_n    (6, 7, 16)") and "num_layers * num_directions" in line for line in lines)
    assert any(line.startswith("c_n    (6, 7, 16)") for line in lines)
    assert any(line.startswith("output (7, 28, 32)") for line in lines)


def test_classifies_from_the_last_time_step():
    torch.manual_seed(0)
    model = RNN(28, 32, 2, 10).eval()
    images = torch.rand(4, 28, 28)
    output, (h_n, _) = model.lstm(images)
    assert torch.allclose(model(images), model.classifer(output[:, -1, :]))
    assert torch.allclose(output[:, -1, :], h_n[-1], atol=1e-6)  # the top layer's last step
    # Only the last time step has read the last row: changing that row must change the scores.
    changed = images.clone()
    changed[:, -1, :] = 1 - changed[:, -1, :]
    assert not torch.allclose(model(images), model(changed))


def test_bidirectional_classifies_from_both_final_hidden_states():
    torch.manual_seed(0)
    model = RNN(28, 16, 2, 10, bidirectional=True).eval()
    images = torch.rand(3, 28, 28)
    output, (h_n, _) = model.lstm(images)
    both_final = torch.cat([h_n[-2], h_n[-1]], dim=1)  # forward read all rows, backward too
    assert torch.allclose(model(images), model.classifer(both_final))
    # output[:, -1] holds the backward direction after reading only the bottom row.
    assert not torch.allclose(both_final, output[:, -1, :])
    assert torch.allclose(both_final[:, 16:], output[:, 0, 16:], atol=1e-6)


def test_the_other_batch_first_layout_computes_the_same_function():
    torch.manual_seed(0)
    batch_first = RNN(28, 16, 2, 10).eval()
    time_major = RNN(28, 16, 2, 10, batch_first=False).eval()
    time_major.load_state_dict(batch_first.state_dict())
    images = torch.rand(3, 28, 28)
    assert torch.allclose(batch_first(images), time_major(images), atol=1e-6)


def test_no_bias_removes_the_lstm_bias_terms():
    model = RNN(28, 16, 2, 10, bias=False)
    assert not any("bias" in name for name, _ in model.lstm.named_parameters())


def test_pixels_are_what_totensor_gives(tiny_data):
    from torchvision import datasets, transforms

    images, labels = lstm_mnist.load_split(tiny_data, "mnist", train=False)
    reference = datasets.MNIST(tiny_data, train=False, transform=transforms.ToTensor())
    for i in (0, 17, len(reference) - 1):
        image, label = reference[i]
        assert torch.equal(images[i], image.squeeze(0)) and labels[i] == label
    assert images.shape == (len(reference), 28, 28) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1


def test_importing_the_script_runs_nothing(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import lstm_mnist"], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(lstm_mnist.Path(lstm_mnist.__file__).parent),
                                          "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert list(tmp_path.iterdir()) == []  # no data, no outputs, no caches in the working folder

