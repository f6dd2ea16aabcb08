"""Why an LSTM (Part 1's last subsection): --cell, --pad-rows, memory.png and --compare-cells."""

import shlex

import pytest
import torch
from conftest import fails, lstm_mnist

from lstm_mnist import RNN


def hparams(**overrides):
    return {**lstm_mnist.model_hparams(lstm_mnist.parse_args([])), **overrides}


def tiny_images(n=6, rows=28, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, rows, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)


@pytest.mark.parametrize("cell,parameters", [("lstm", 214_282), ("gru", 161_034), ("rnn", 54_538)])
def test_parameter_counts_at_2_by_128(cell, parameters, capsys):
    model = lstm_mnist.build_model(hparams(cell=cell))
    assert lstm_mnist.parameter_count(model) == parameters
    layer = lstm_mnist.recurrent_layer(model)
    assert type(layer) is lstm_mnist.CELLS[cell]
    assert (layer.input_size, layer.hidden_size, layer.num_layers, layer.batch_first) == (28, 128, 2, True)
    # The state_dict names the layer: lstm.* (the tutorial's keys), gru.*, rnn.*; the classifier keeps classifer.*.
    assert {key.split(".")[0] for key in model.state_dict()} == {cell, "classifer"}
    if cell == "rnn":
        assert layer.nonlinearity == "tanh"


def test_the_default_flags_still_build_the_tutorials_rnn_itself():
    assert type(lstm_mnist.build_model(hparams())) is RNN  # not CellModel: the default run never meets it
    assert type(lstm_mnist.build_model(hparams(pad_rows=1))) is lstm_mnist.CellModel


def test_a_cell_model_with_the_lstm_draws_the_same_weights_as_the_tutorials_rnn():
    torch.manual_seed(0)
    tutorial = lstm_mnist.build_model(hparams())
    torch.manual_seed(0)
    padded = lstm_mnist.build_model(hparams(pad_rows=4))
    for (name, weight), (other_name, other) in zip(tutorial.state_dict().items(), padded.state_dict().items()):
        assert name == other_name and torch.equal(weight, other)


def test_pad_rows_reach_the_recurrent_layer_as_zeros_after_the_image():
    model = lstm_mnist.build_model(hparams(cell="gru", pad_rows=5, hidden_dim=8, batch_first=False))
    seen = []
    model.gru.register_forward_hook(lambda module, inputs, outputs: seen.append(inputs[0]))
    images, _ = tiny_images(3)
    assert model(images).shape == (3, 10)
    rows = seen[0].transpose(0, 1)  # (28 + 5, batch, 28) -> (batch, 33, 28)
    assert rows.shape == (3, 33, 28)
    assert torch.equal(rows[:, :28], images) and torch.count_nonzero(rows[:, 28:]) == 0


def test_show_shapes_of_a_gru_has_h_0_and_no_c_0(capsys):
    shapes = lstm_mnist.main(["--show-shapes", "--cell", "gru", "--pad-rows", "3", "--batch-size", "4"])["shapes"]
    assert shapes["h_0"] == shapes["h_n"] == (2, 4, 128) and "c_0" not in shapes and "c_n" not in shapes
    assert shapes["input"] == (4, 31, 28) and shapes["output"] == (4, 31, 128)
    out = capsys.readouterr().out
    assert "nn.GRU(28, 128" in out and "no c_0, c_n" in out


# --- The memory measurement, on cases whose answer is known ----------------------------


def with_forget_gates(model, bias):
    """Every forget gate's bias set to `bias` (+-1e4: the gate is exactly 1 or 0 in float32)."""
    hidden = model.lstm.hidden_size
    with torch.no_grad():
        for name, value in model.lstm.named_parameters():
            if name.startswith("bias_"):
                value[hidden : 2 * hidden] = bias / 2  # bias_ih + bias_hh
    return model


def zero_recurrent_weights(model):
    with torch.no_grad():
        for name, value in lstm_mnist.recurrent_layer(model).named_parameters():
            if name.startswith("weight_hh"):
                value.zero_()
    return model


def test_a_plain_rnn_without_recurrent_weights_depends_on_the_last_row_only():
    torch.manual_seed(0)
    model = zero_recurrent_weights(lstm_mnist.build_model(hparams(cell="rnn", hidden_dim=16)))
    images, labels = tiny_images(8)
    grads = lstm_mnist.memory_profile(model, images, labels)  # (8, 28)
    assert grads.shape == (8, 28)
    assert torch.count_nonzero(grads[:, :-1]) == 0 and bool((grads[:, -1] > 0).all())


def test_an_lstm_with_open_forget_gates_still_depends_on_its_first_row():
    torch.manual_seed(0)
    images, labels = tiny_images(8)
    closed = zero_recurrent_weights(with_forget_gates(lstm_mnist.build_model(hparams(hidden_dim=16)), -1e4))
    grads = lstm_mnist.memory_profile(closed, images, labels)
    assert torch.count_nonzero(grads[:, :-1]) == 0  # f = 0 and no h_{t-1}: every earlier row forgotten
    opened = with_forget_gates(closed, 1e4)  # f = 1: c_27 = sum of i_t * g_t over all 28 rows
    grads = lstm_mnist.memory_profile(opened, images, labels)
    assert bool((grads[:, 0] > 0.05 * grads[:, -1]).all())


def test_memory_profile_is_each_images_own_gradient_and_counts_the_zero_rows():
    torch.manual_seed(0)
    model = lstm_mnist.build_model(hparams(cell="gru", hidden_dim=16, pad_rows=4))
    images, labels = tiny_images(3)
    grads = lstm_mnist.memory_profile(model, images, labels)  # (3, 28 + 4)
    alone = lstm_mnist.memory_profile(model, images[1:2], labels[1:2])  # one image on its own
    assert grads.shape == (3, 32)
    torch.testing.assert_close(grads[1:2], alone)
    rows = lstm_mnist.with_zero_rows(images[1:2], 4).requires_grad_()  # the same by hand
    model.read(rows)[0, labels[1]].backward()
    torch.testing.assert_close(grads[1], rows.grad[0].norm(dim=1))


def test_the_untrained_twin_leaves_the_random_state_alone():
    model = lstm_mnist.build_model(hparams(cell="rnn", hidden_dim=8))
    torch.manual_seed(5)
    before = torch.get_rng_state()
    twin = lstm_mnist.untrained_twin(model)
    assert torch.equal(torch.get_rng_state(), before)
    again = lstm_mnist.untrained_twin(model)
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), again.state_dict().values()))


# --- Whole runs on the tiny data -------------------------------------------------------
# conftest skips main()'s figures unless a test is marked `figures`; the one that is draws only
# the figures this part changes (memory.png, and gates.png or its skip), to stay quick.


@pytest.fixture
def quick_figures(monkeypatch):
    """Skip the figures this part leaves alone (memory.png and gates.png are still drawn)."""
    for name in ("plot_predictions", "plot_scores", "plot_curves", "plot_reading", "plot_mistakes"):
        monkeypatch.setattr(lstm_mnist, name, lambda *args: None)


@pytest.mark.figures
@pytest.mark.parametrize("cell,pad_rows", [("gru", 0), ("rnn", 3), ("lstm", 2)])
def test_each_cell_trains_reloads_and_draws_memory_png(run_main, quick_figures, tmp_path, capsys, cell, pad_rows):
    result = run_main("--epochs", 1, "--max-batches", 2, "--cell", cell, "--pad-rows", pad_rows)
    out = capsys.readouterr().out
    parameters = lstm_mnist.parameter_count(result["model"])
    assert f"{parameters:,} parameters" in out
    state = torch.load(result["weights"], weights_only=True)
    fresh = lstm_mnist.build_model(hparams(cell=cell, pad_rows=pad_rows, hidden_dim=16))
    fresh.load_state_dict(state)  # RNN.pth loads into a fresh model with the same flags
    images, _ = tiny_images(4)
    torch.testing.assert_close(fresh.eval()(images), result["model"].eval()(images))
    figures = result["figures"]
    assert figures["memory"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ("gates" in figures) == (cell == "lstm") and (tmp_path / "out" / "gates.png").exists() == (cell == "lstm")
    assert ("gates.png skipped" in out) == (cell != "lstm")


def test_another_cell_or_pad_rows_is_refused_on_eval_only_and_resume(run_main, tiny_data, tmp_path, capsys):
    run_main("--epochs", 1, "--max-batches", 2, "--cell", "gru")
    base = ["--device", "cpu", "--hidden-dim", "16", "--batch-size", "50", "--data-dir", tiny_data,
            "--out-dir", tmp_path / "out"]
    capsys.readouterr()
    err = fails(capsys, [*base, "--eval-only", "--cell", "rnn"], 1)
    assert "cell=gru" in err and "cell=rnn" in err and "--cell gru" in err
    err = fails(capsys, [*base, "--resume", "--epochs", "2", "--max-batches", "2", "--cell", "gru", "--pad-rows", "3"],
                1)
    assert "pad_rows=0" in err and "--pad-rows 0" in err
    assert run_main("--eval-only", "--cell", "gru")["final_test_acc"] >= 0  # the same cell reloads


def test_eval_only_and_resume_read_the_model_flags_from_the_checkpoint(run_main, tiny_data, tmp_path, capsys):
    first = run_main("--epochs", 1, "--max-batches", 2, "--cell", "gru")
    capsys.readouterr()
    again = run_main("--eval-only", "--max-batches", 2)  # no --cell gru typed: the checkpoint says gru
    out = capsys.readouterr().out
    assert "model: 2 x 16 GRU;" in out and "LSTM" not in out and "cell=gru" in out  # the config line too
    assert again["final_test_acc"] == first["final_test_acc"]
    resumed = run_main("--resume", "--epochs", 2, "--max-batches", 2)
    assert type(lstm_mnist.recurrent_layer(resumed["model"])) is torch.nn.GRU and len(resumed["history"]) == 2
    capsys.readouterr()
    for flag in ("--eval-only", "--resume"):
        err = fails(capsys, ["--device", "cpu", "--hidden-dim", "16", "--batch-size", "50", "--data-dir", tiny_data,
                             "--out-dir", tmp_path / "out", "--max-batches", "2", flag, "--cell", "lstm"], 1)
        assert "cell=gru" in err and "cell=lstm" in err and "leave --cell out" in err
        assert "model:" not in capsys.readouterr().out  # refused before any model line


def test_a_checkpoint_from_before_cell_and_pad_rows_reads_as_an_lstm(run_main, tiny_data, tmp_path, capsys):
    result = run_main("--epochs", 1, "--max-batches", 2)
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    del checkpoint["hparams"]["cell"], checkpoint["hparams"]["pad_rows"]  # the layout before this change
    torch.save(checkpoint, result["checkpoint"])
    assert run_main("--eval-only")["history"] == result["history"]
    capsys.readouterr()
    err = fails(capsys, ["--device", "cpu", "--hidden-dim", "16", "--batch-size", "50", "--data-dir", tiny_data,
                         "--out-dir", tmp_path / "out", "--eval-only", "--cell", "rnn"], 1)
    assert "cell=lstm" in err


def test_flags_that_only_an_lstm_has_are_refused_for_the_other_cells(capsys):
    err = fails(capsys, ["--cell", "gru", "--forget-bias", "1"], 2)
    assert "only an LSTM has forget gates" in err
    err = fails(capsys, ["--cell", "rnn", "--recipe", "fast"], 2)
    assert "--forget-bias 0" in err
    assert "--compare-cells" in fails(capsys, ["--compare-cells", "--cell", "rnn"], 2)
    assert "expected a whole number" in fails(capsys, ["--pad-rows", "-1"], 2)


def test_compare_cells_trains_all_three_and_prints_one_table(run_main, tmp_path, capsys):
    result = run_main("--compare-cells", "--epochs", 1, "--max-batches", 2, "--pad-rows", 1)
    out = capsys.readouterr().out
    plan = out.splitlines()[0]  # said before anything is trained
    assert plan.startswith("--compare-cells: 3 runs (lstm, gru, rnn), 1 epoch each; about ") and " min on " in plan
    assert [row["cell"] for row in result["cells"]] == ["lstm", "gru", "rnn"]
    table = out[out.rindex("final test | s/epoch"):].splitlines()[1:4]
    for row, line in zip(result["cells"], table):
        assert line.startswith(row["cell"]) and f"{row['parameters']:,}" in line
        assert f"{row['final_test_acc']:.2f}%" in line and len(row["epoch_acc"]) == 1
        assert (tmp_path / "out" / row["cell"] / "RNN.pth").exists()
        assert result["results"][row["cell"]][0]["memory"]["trained"].shape == (3, 29)
    assert result["figure"] == tmp_path / "out" / "cells.png" and result["figure"].exists()
    assert len({row["parameters"] for row in result["cells"]}) == 3


def test_the_figures_read_the_zero_rows_too(tmp_path, capsys):
    torch.manual_seed(0)
    model = lstm_mnist.build_model(hparams(cell="gru", pad_rows=3, hidden_dim=8)).eval()
    images, labels = tiny_images(20)
    reading = lstm_mnist.probs_while_reading(model, images)  # (20, 28 + 3, 10)
    assert reading.shape == (20, 31, 10)
    torch.testing.assert_close(reading[:, -1], model(images).softmax(dim=1))  # the last row: the answer
    loader = lstm_mnist.make_loader(images, labels, lstm_mnist.EVAL_BATCH_SIZE, False)
    paths = {name: tmp_path / f"{name}.png" for name in lstm_mnist.FIGURES if name != "scores"}
    (tmp_path / "gates.png").write_bytes(b"an earlier LSTM run's figure")
    lstm_mnist.draw_more_figures(model, loader, [], lstm_mnist.DATASETS["mnist"][1], paths)
    assert list(paths) == ["predictions", "curves", "reading", "mistakes", "memory"]  # gates.png left out
    assert all(path.exists() for path in paths.values()) and not (tmp_path / "gates.png").exists()
    out = capsys.readouterr().out
    assert "gates.png skipped" in out and "removed the earlier run's" in out  # not this model's figure
    lstm = lstm_mnist.build_model(hparams(pad_rows=3, hidden_dim=8))
    lstm_mnist.plot_gates(lstm, images[0], int(labels[0]), lstm_mnist.DATASETS["mnist"][1], tmp_path / "gates.png")
    assert (tmp_path / "gates.png").exists()


def test_compare_cells_interrupted_in_its_second_cell_finishes_with_the_printed_command(
        run_main, tiny_data, tmp_path, monkeypatch, capsys):
    train, calls = lstm_mnist.train_one_epoch, []

    def interrupted(*args, **kwargs):  # Ctrl-C in the second cell's second epoch
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return train(*args, **kwargs)

    argv = ["--compare-cells", "--epochs", 2, "--max-batches", 2]
    monkeypatch.setattr(lstm_mnist, "train_one_epoch", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        run_main(*argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 130 and f"{tmp_path / 'out' / 'gru' / 'checkpoint.pt'} holds epoch 1" in err
    command = shlex.split(err.split("continue with: ")[1])[2:]  # after the python and the script's path
    assert command[-1] == "--resume" and "--compare-cells" in command
    monkeypatch.setattr(lstm_mnist, "train_one_epoch", train)
    result = lstm_mnist.main(command)
    assert [row["cell"] for row in result["cells"]] == ["lstm", "gru", "rnn"] and result["figure"].exists()
    assert all(len(runs[0]["history"]) == 2 for runs in result["results"].values())
    out = capsys.readouterr().out
    assert "resuming after epoch 2" in out and "resuming after epoch 1" in out  # lstm reloaded, gru went on


def test_compare_cells_with_seeds_prints_the_mean_of_each_cell(run_main, tmp_path, capsys):
    result = run_main("--compare-cells", "--epochs", 1, "--max-batches", 2, "--seeds", 0, 1)
    out = capsys.readouterr().out
    assert "6 runs (lstm, gru, rnn, seeds 0 1)" in out.splitlines()[0]
    for row in result["cells"]:
        finals = [run["final_test_acc"] for run in result["results"][row["cell"]]]
        assert row["final_test_acc"] == pytest.approx(sum(finals) / 2) and row["final_range"] == (min(finals),
                                                                                                  max(finals))
        assert (tmp_path / "out" / f"{row['cell']}-seed1" / "RNN.pth").exists()
    assert "mean of 2 seeds" in out
    lstm = result["cells"][0]
    low, high = lstm["epoch_range"][0]
    assert f"{lstm['epoch_acc'][0]:.2f} ({low:.2f}-{high:.2f})" in out  # each epoch's range over the seeds


@pytest.mark.parametrize("argv", [["--predict", "x.png", "--compare-cells"], ["--show-shapes", "--predict", "x.png"],
                                  ["--compare-cells", "--show-shapes"], ["--seeds", "1", "2"],
                                  ["--predict", "x.png", "--resume"]])
def test_flags_that_do_something_else_are_refused_together(argv, capsys):
    err = fails(capsys, argv, 2)
    assert "not allowed with" in err or "only with --compare-cells" in err


def test_the_memory_caption_says_what_low_means_under_bidirectional(monkeypatch, tmp_path):
    titles = []
    monkeypatch.setattr(lstm_mnist, "save_figure", lambda fig, path: titles.append(fig.axes[0].get_title()))
    images, labels = tiny_images(8)
    for bidirectional in (False, True):
        model = lstm_mnist.build_model(hparams(hidden_dim=8, bidirectional=bidirectional))
        lstm_mnist.plot_memory(model, images, labels, tmp_path / "memory.png")
    assert "Low on the early rows = forgotten" in titles[0]
    assert "forgotten" not in titles[1] and "in the middle" in titles[1]


def test_the_out_of_memory_line_names_pad_rows_too():
    line = lstm_mnist.one_line(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert "--pad-rows" in line and "--batch-size" in line and "2.00 GiB" in line
