"""--recipe fast / best: what they expand to, and that they train, save, reload and resume exactly."""

import pytest
import torch
from conftest import TINY_ARGS, lstm_mnist, metrics

RECIPE_KEYS = ["epochs", "batch_size", "lr", "one_cycle", "weight_decay", "label_smoothing", "augment", "ema"]


@pytest.mark.parametrize("recipe", ["fast", "best"])
def test_a_recipe_is_exactly_the_flags_it_documents(recipe):
    by_recipe = vars(lstm_mnist.parse_args(["--recipe", recipe]))
    by_flags = vars(lstm_mnist.parse_args(lstm_mnist.recipe_flags(recipe).split()))
    assert {**by_recipe, "recipe": None} == {**by_flags, "recipe": None}
    assert by_recipe != {**vars(lstm_mnist.parse_args([])), "recipe": recipe}  # it does change something
    # Its documented flags are in --help, as a user would type them.
    assert lstm_mnist.recipe_flags(recipe) in " ".join(lstm_mnist.build_parser().format_help().split())


def test_the_tutorial_recipe_is_the_default_config():
    assert vars(lstm_mnist.parse_args(["--recipe", "tutorial"])) == vars(lstm_mnist.parse_args([]))
    defaults = vars(lstm_mnist.parse_args([]))
    assert {key: defaults[key] for key in RECIPE_KEYS} == {
        "epochs": 30, "batch_size": 100, "lr": 1e-3, "one_cycle": False, "weight_decay": 0.0,
        "label_smoothing": 0.0, "augment": False, "ema": 0.0}


def test_a_flag_given_on_its_own_overrides_the_recipe():
    args = lstm_mnist.parse_args(["--recipe", "best", "--epochs", "2", "--ema", "0.9"])
    assert (args.epochs, args.ema, args.augment, args.weight_decay) == (2, 0.9, True, 0.05)
    assert lstm_mnist.parse_args(["--epochs", "2", "--recipe", "best"]).epochs == 2  # order does not matter


def test_the_config_line_prints_what_the_recipe_set(run_main, capsys):
    run_main("--recipe", "best", "--epochs", "1", "--max-batches", "2")
    config = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("config: "))
    for part in ["recipe=best", "epochs=1", "one_cycle=True", "weight_decay=0.05", "label_smoothing=0.1",
                 "augment=True", "ema=0.999"]:
        assert part in config.split(), part


def test_random_warp_keeps_shapes_pixel_range_and_labels_and_moves_pixels():
    torch.manual_seed(0)
    images = torch.rand(64, 28, 28)
    warped = lstm_mnist.random_warp(images)
    assert warped.shape == images.shape and warped.dtype == images.dtype
    assert warped.min() >= 0 and warped.max() <= 1
    assert not torch.allclose(warped, images)
    # Two calls draw different warps; a digit's ink stays mostly in the frame.
    assert not torch.allclose(lstm_mnist.random_warp(images), warped)
    digit = torch.zeros(1, 28, 28)
    digit[0, 8:20, 12:16] = 1
    assert lstm_mnist.random_warp(digit).sum().item() == pytest.approx(digit.sum().item(), rel=0.3)


def test_augmentation_is_used_in_training_only(tiny_data, monkeypatch):
    calls = []
    warp = lstm_mnist.random_warp
    monkeypatch.setattr(lstm_mnist, "random_warp", lambda images: calls.append(len(images)) or warp(images))
    images, labels = lstm_mnist.load_split(tiny_data, "mnist", train=True)
    loader = lstm_mnist.make_loader(images, labels, 50, shuffle=False, max_batches=3)
    model = lstm_mnist.RNN(28, 16, 2, 10)
    criterion, optimizer = lstm_mnist.make_criterion_and_optimizer(model, 1e-3)
    augment = lstm_mnist.Levers(args=lstm_mnist.parse_args(["--augment"]))
    lstm_mnist.train_one_epoch(model, loader, criterion, optimizer, augment)
    assert calls == [50, 50, 50]
    lstm_mnist.evaluate(model, loader, criterion)
    assert calls == [50, 50, 50]  # the test set is never warped


def test_weight_decay_builds_adamw_and_label_smoothing_only_trains_on_a_smoothed_loss():
    model = lstm_mnist.RNN(28, 16, 2, 10)
    criterion, optimizer = lstm_mnist.make_criterion_and_optimizer(model, 1e-3, weight_decay=0.05)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 0.05
    assert criterion.label_smoothing == 0.0  # what every test and validation loss is measured with
    smoothed = lstm_mnist.Levers(args=lstm_mnist.parse_args(["--label-smoothing", "0.1"]))
    assert smoothed.train_criterion(criterion).label_smoothing == 0.1
    assert lstm_mnist.Levers().train_criterion(criterion) is criterion
    criterion, optimizer = lstm_mnist.make_criterion_and_optimizer(model, 1e-3)
    assert type(optimizer) is torch.optim.Adam and criterion.label_smoothing == 0.0  # the tutorial's


def interrupt_at_epoch(monkeypatch, epoch):
    save = lstm_mnist.save_checkpoint

    def interrupted(run, out_dir):
        if run.epoch == epoch:
            raise KeyboardInterrupt
        return save(run, out_dir)

    monkeypatch.setattr(lstm_mnist, "save_checkpoint", interrupted)
    return save


@pytest.mark.parametrize("recipe", ["fast", "best"])
def test_a_recipe_trains_saves_reloads_and_resumes_exactly(recipe, run_main, tmp_path, monkeypatch, tiny_data):
    args = ["--recipe", recipe, "--epochs", "3"]
    straight = run_main(*args, out_dir=tmp_path / "straight")
    save = interrupt_at_epoch(monkeypatch, 2)
    with pytest.raises(SystemExit):
        run_main(*args, out_dir=tmp_path / "split")
    monkeypatch.setattr(lstm_mnist, "save_checkpoint", save)
    resumed = run_main(*args, "--resume", out_dir=tmp_path / "split")
    assert metrics(resumed["history"]) == metrics(straight["history"])
    assert resumed["final_test_acc"] == straight["final_test_acc"] == straight["history"][-1]["test_acc"]
    checkpoint = torch.load(straight["checkpoint"], weights_only=True)
    assert checkpoint["settings"]["recipe"] == recipe
    # The saved "model" is what the final test reloads: with --ema, the averaged weights.
    model = lstm_mnist.RNN(28, 16, 2, 10)
    model.load_state_dict(checkpoint["model"])
    images, labels = lstm_mnist.load_split(tiny_data, "mnist", train=False)
    loader = lstm_mnist.make_loader(images, labels, 100, shuffle=False)
    assert lstm_mnist.evaluate(model, loader, torch.nn.CrossEntropyLoss())[1] == straight["final_test_acc"]
    # Both recipes average the weights (--ema): the weights training goes on from are kept apart.
    trained = checkpoint["trained_weights"]
    assert not torch.equal(trained["classifer.weight"], checkpoint["model"]["classifer.weight"])
    assert checkpoint["ema_updates"] == 3 * 8  # one update per step: 400 images / batch 50, 3 epochs


def test_without_ema_the_checkpoint_holds_the_trained_weights_only(run_main):
    checkpoint = torch.load(run_main("--epochs", "1")["checkpoint"], weights_only=True)
    assert checkpoint["trained_weights"] is None and checkpoint["ema_updates"] == 0


def test_the_final_test_of_an_ema_run_says_it_tests_the_average(run_main, capsys):
    run_main("--epochs", "1", "--ema", "0.9")
    assert "Final Test (the moving average of the weights, --ema)" in capsys.readouterr().out


def test_resuming_without_a_lever_of_the_recipe_is_refused_in_one_line(run_main, tiny_data, tmp_path, capsys):
    run_main("--recipe", "fast", "--epochs", "1", out_dir=tmp_path / "fast")
    with pytest.raises(SystemExit) as exit_info:
        lstm_mnist.main([*TINY_ARGS, "--data-dir", str(tiny_data), "--out-dir", str(tmp_path / "fast"),
                         "--resume", "--epochs", "3", "--batch-size", "50", "--one-cycle"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ema=0.998" in err and "resume with the flags it was trained with: --ema 0.998" in err


def test_the_recipes_name_and_forget_bias_are_not_what_resume_checks(run_main, tmp_path, monkeypatch):
    """The recipe spelled out as flags resumes it: its name and the forget bias at the start do not steer the rest."""
    straight = run_main("--recipe", "fast", out_dir=tmp_path / "straight")
    save = interrupt_at_epoch(monkeypatch, 2)
    with pytest.raises(SystemExit):
        run_main("--recipe", "fast", out_dir=tmp_path / "split")
    monkeypatch.setattr(lstm_mnist, "save_checkpoint", save)
    resumed = run_main("--epochs", "3", "--batch-size", "50", "--one-cycle", "--ema", "0.998", "--resume",
                       out_dir=tmp_path / "split")
    assert metrics(resumed["history"]) == metrics(straight["history"])


def test_forget_bias_raises_only_the_forget_gates_bias_in_every_layer_and_direction():
    torch.manual_seed(0)
    model = lstm_mnist.RNN(28, 16, 2, 10, bidirectional=True)
    before = {name: p.clone() for name, p in model.lstm.named_parameters()}
    lstm_mnist.open_forget_gates(model.lstm, 1.0)
    for name, p in model.lstm.named_parameters():
        change = p - before[name]
        if name.startswith("bias_ih_l"):  # gate order i, f, g, o: the second quarter is f
            assert torch.allclose(change[16:32], torch.ones(16)) and change[:16].abs().sum() == 0
            assert change[32:].abs().sum() == 0
        else:
            assert change.abs().sum() == 0, name


def test_forget_bias_is_used_by_the_run_and_recorded(run_main):
    checkpoint = torch.load(run_main("--epochs", "1", "--forget-bias", "1")["checkpoint"], weights_only=True)
    assert checkpoint["settings"]["forget_bias"] == 1.0
