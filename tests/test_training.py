"""Training, saving, reloading and plotting, end to end on tiny data (and on real MNIST where present)."""

import pytest
import torch
from conftest import HAS_REAL_DATA, N_TEST, N_TRAIN, REAL_DATA, lstm_mnist, metrics

from lstm_mnist import RNN


def test_train_loss_is_the_mean_per_image_actually_seen(tiny_data):
    images, labels = lstm_mnist.load_split(tiny_data, "mnist", train=True)
    torch.manual_seed(0)
    model = RNN(28, 16, 2, 10)
    criterion = torch.nn.CrossEntropyLoss()
    frozen = torch.optim.Adam(model.parameters(), lr=0.0)  # lr 0: the weights never move
    # Three batches of 50 out of 400 images, in order, then the same 150 images tested.
    loader = lstm_mnist.make_loader(images, labels, 50, shuffle=False, max_batches=3)
    train_loss, train_acc, num_seen = lstm_mnist.train_one_epoch(model, loader, criterion, frozen)
    test_loss, test_acc = lstm_mnist.evaluate(model, lstm_mnist.make_loader(images[:150], labels[:150], 50, False),
                                              criterion)
    assert num_seen == 150
    assert train_loss == pytest.approx(test_loss, rel=1e-5)
    assert train_acc == pytest.approx(test_acc)


def test_end_to_end_run_saves_reloads_and_draws(drawn_run, tiny_data):
    result, printed, out_dir, cwd, data_before = (drawn_run[key] for key in ("result", "printed", "out_dir", "cwd",
                                                                             "data_before"))

    # The checkpoint is plain data: it loads with weights_only=True into a fresh model
    # that predicts exactly what the trained model predicts.
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    fresh = lstm_mnist.build_model(checkpoint["hparams"])
    fresh.load_state_dict(checkpoint["model"])
    images, _ = lstm_mnist.load_split(tiny_data, "mnist", train=False)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images), result["model"].eval()(images))

    # The final line reports the reloaded model's accuracy, the last epoch's number.
    assert printed[-1] == f"final test accuracy: {result['history'][-1]['test_acc']:.2f}%"
    assert result["final_test_acc"] == result["history"][-1]["test_acc"]
    assert sum(line.startswith("epoch ") for line in printed) == 2
    assert any(line.startswith("  epoch  1/2 | batch    4/8 | loss ") for line in printed)
    for path in result["figures"].values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing written anywhere but --out-dir: no stray temp file, no data copy, no cwd file.
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "RNN.pth", "checkpoint.pt", "curves.png", "gates.png", "memory.png", "mistakes.png", "predictions.png",
        "reading.png", "scores.png"]
    assert list(cwd.iterdir()) == []
    assert sorted(p.relative_to(tiny_data) for p in tiny_data.rglob("*")) == data_before


def test_same_seed_same_numbers_other_seed_other_numbers(shared_run, run_main, tmp_path):
    first = shared_run("--epochs", "2")
    again = run_main("--epochs", "2", out_dir=tmp_path / "b")
    other = run_main("--epochs", "2", "--seed", "1", out_dir=tmp_path / "c")
    assert metrics(first["history"]) == metrics(again["history"])
    assert metrics(first["history"]) != metrics(other["history"])


def test_resume_repeats_the_uninterrupted_run(shared_run, run_main, tmp_path, capsys):
    straight = shared_run("--epochs", "3")
    run_main("--epochs", "1", out_dir=tmp_path / "split")
    resumed = run_main("--epochs", "3", "--resume", out_dir=tmp_path / "split")
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert metrics(resumed["history"]) == metrics(straight["history"])
    assert resumed["final_test_acc"] == straight["final_test_acc"]


@pytest.mark.figures
def test_eval_only_retests_the_saved_model_without_training(drawn_run, run_main, copy_of, capsys):
    trained = drawn_run["result"]
    out_dir = copy_of(drawn_run["out_dir"])
    for figure in trained["figures"].values():
        (out_dir / figure.name).unlink()
    capsys.readouterr()
    again = run_main("--eval-only", out_dir=out_dir)
    printed = capsys.readouterr().out
    assert "epoch " not in printed  # no training line
    assert again["final_test_acc"] == trained["final_test_acc"]
    assert all(path.exists() for path in again["figures"].values())


def test_every_lstm_flag_trains_end_to_end_and_reloads(shared_run, run_main, copy_of):
    flags = ["--bidirectional", "--n-layer", "3", "--dropout", "0.2", "--no-bias", "--no-batch-first"]
    result = shared_run("--epochs", "1", *flags)
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    assert checkpoint["hparams"] == {"hidden_dim": 16, "n_layer": 3, "dropout": 0.2, "bidirectional": True,
                                     "bias": False, "batch_first": False, "cell": "lstm", "pad_rows": 0}
    again = run_main("--eval-only", *flags, out_dir=copy_of(result["out_dir"]))
    assert again["final_test_acc"] == result["final_test_acc"]


def test_fashion_mnist_uses_its_folder_and_class_names(run_main, tmp_path, capsys):
    result = run_main("--epochs", "1", "--dataset", "fashion-mnist", out_dir=tmp_path / "out")
    printed = capsys.readouterr().out
    names = lstm_mnist.DATASETS["fashion-mnist"][1]
    assert any(f"test image 0: label {name}, pred " in printed for name in names)
    assert torch.load(result["checkpoint"], weights_only=True)["dataset"] == "fashion-mnist"


def test_max_batches_limits_training_and_testing(run_main, tiny_data, tmp_path, capsys):
    run_main("--epochs", "1", "--max-batches", "2", "--log-interval", "1", out_dir=tmp_path / "out")
    printed = capsys.readouterr().out
    assert "batch    2/2 | loss" in printed and "batch    3/" not in printed
    loaders = lstm_mnist.load_data(tiny_data, "mnist", torch.device("cpu"), 50, 0, 2)
    assert len(loaders["train"]) == 2 and len(loaders["test"].dataset) == 2 * 50 < N_TEST


def test_val_size_holds_out_training_images_and_reports_on_them(run_main, tiny_data, tmp_path, capsys):
    result = run_main("--epochs", "1", "--val-size", "100", out_dir=tmp_path / "out")
    printed = capsys.readouterr().out.splitlines()
    epoch_line = next(line for line in printed if line.startswith("epoch "))
    assert "| val loss " in epoch_line and "test loss" not in epoch_line
    assert "val_acc" in result["history"][0] and "test_acc" not in result["history"][0]
    assert printed[-1] == f"final test accuracy: {result['final_test_acc']:.2f}%"  # the test set, once
    loaders = lstm_mnist.load_data(tiny_data, "mnist", torch.device("cpu"), 50, 0, val_size=100)
    assert len(loaders["train"].dataset) == N_TRAIN - 100 and len(loaders["val"].dataset) == 100
    train_images = loaders["train"].dataset.tensors[0].flatten(1)
    val_images = loaders["val"].dataset.tensors[0].flatten(1)
    assert not (torch.cdist(val_images, train_images).min(dim=1).values == 0).any()  # disjoint


def test_one_cycle_warms_up_anneals_and_resumes_exactly(shared_run, run_main, tmp_path, monkeypatch):
    straight = shared_run("--epochs", "3", "--one-cycle")
    checkpoint = torch.load(straight["checkpoint"], weights_only=True)
    lr = lstm_mnist.DEFAULTS["lr"]
    assert checkpoint["settings"]["one_cycle"] is True
    group = checkpoint["optimizer"]["param_groups"][0]
    assert group["max_lr"] == pytest.approx(lstm_mnist.ONE_CYCLE_PEAK * lr)  # the peak it warmed up to
    assert group["lr"] < group["max_lr"] / 100  # annealed to almost nothing by the last step
    assert checkpoint["scheduler"]["last_epoch"] == 3 * 8  # one scheduler step per batch
    # Interrupt a 3-epoch one-cycle run (Ctrl-C as it starts saving epoch 2), then resume it.
    save = lstm_mnist.save_checkpoint

    def interrupted_at_epoch_2(run, out_dir):
        if run.epoch == 2:
            raise KeyboardInterrupt
        return save(run, out_dir)

    monkeypatch.setattr(lstm_mnist, "save_checkpoint", interrupted_at_epoch_2)
    with pytest.raises(SystemExit) as exit_info:
        run_main("--epochs", "3", "--one-cycle", out_dir=tmp_path / "split")
    assert exit_info.value.code == 130
    monkeypatch.setattr(lstm_mnist, "save_checkpoint", save)
    resumed = run_main("--epochs", "3", "--one-cycle", "--resume", out_dir=tmp_path / "split")
    assert metrics(resumed["history"]) == metrics(straight["history"])
    assert metrics(resumed["history"]) != metrics(shared_run("--epochs", "3")["history"])


@pytest.mark.skipif(not HAS_REAL_DATA, reason=f"real MNIST not found in {REAL_DATA}")
def test_learns_real_mnist_far_above_chance(tmp_path):
    result = lstm_mnist.main(["--device", "cpu", "--data-dir", str(REAL_DATA), "--out-dir", str(tmp_path),
                              "--epochs", "2", "--max-batches", "100", "--log-interval", "1000"])
    # 20,000 training images seen, tested on the first 10,000 test images; chance is 10%.
    assert result["final_test_acc"] > 85.0



def test_evaluate_switches_dropout_off_itself():
    torch.manual_seed(0)
    model = RNN(28, 16, 2, 10, dropout=0.5)
    images, labels = torch.rand(60, 28, 28), torch.randint(0, 10, (60,))
    loader = lstm_mnist.make_loader(images, labels, 20, shuffle=False)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()  # as training leaves it: dropout on
    first = lstm_mnist.evaluate(model, loader, criterion)
    model.train()
    assert lstm_mnist.evaluate(model, loader, criterion) == first  # no random dropout at test time
    with torch.no_grad():
        expected = criterion(model.eval()(images), labels).item()
    assert first[0] == pytest.approx(expected, rel=1e-5)


def test_the_final_test_prints_the_tutorials_lines_and_a_loss(drawn_run):
    result, printed = drawn_run["result"], drawn_run["printed"]
    assert "Final Test" in printed
    assert f"final test loss: {result['test_loss']:.4f}" in printed
    assert printed.index("Final Test") < printed.index(f"final test loss: {result['test_loss']:.4f}")
    assert printed[-1] == f"final test accuracy: {result['final_test_acc']:.2f}%"


def test_rnn_pth_loads_with_the_tutorials_own_lines(run_main, tiny_data, tmp_path):
    result = lstm_mnist.main(["--device", "cpu", "--data-dir", str(tiny_data), "--out-dir", str(tmp_path / "out"),
                              "--epochs", "1", "--log-interval", "100"])  # the tutorial's model, RNN(28, 128, 2, 10)
    path = result["weights"]
    assert path == tmp_path / "out" / "RNN.pth"
    model = RNN(28, 128, 2, 10)
    model.load_state_dict(torch.load(path))  # the tutorial's reload line, as it stands
    images, _ = lstm_mnist.load_split(tiny_data, "mnist", train=False)
    with torch.no_grad():
        assert torch.equal(model.eval()(images), result["model"].eval()(images))
    # RNN.pth holds the same weights as checkpoint.pt's "model", and nothing else.
    checkpoint = torch.load(result["checkpoint"], weights_only=True)
    weights = torch.load(path, weights_only=True)
    assert weights.keys() == checkpoint["model"].keys()
    assert all(torch.equal(weights[name], checkpoint["model"][name]) for name in weights)


def test_section_8_prints_the_label_scores_and_prediction_of_test_image_0(drawn_run, tiny_data):
    result, printed = drawn_run["result"], "\n".join(drawn_run["printed"]) + "\n"
    images, labels = lstm_mnist.load_split(tiny_data, "mnist", train=False)
    with torch.no_grad():
        scores = result["model"].eval()(images[:1])[0]
    label, pred = int(labels[0]), int(scores.argmax())
    # The tutorial's print(label, output) and print(label, pred), in that order, after the final test.
    first = printed.index(f"test image 0: label {label}, scores {scores}\n")
    second = printed.index(f"test image 0: label {label}, pred {pred}\n")
    assert printed.index("Final Test\n") < first < second
