"""Nothing lost, nothing misreported: resume repeats the run or refuses, and every number means what it says."""

import os
import stat

import pytest
import torch
from conftest import TINY_ARGS, fails, lstm_mnist, make_digits, metrics, write_idx

def interrupt_at_epoch(monkeypatch, epoch, after_saving=False):
    """Ctrl-C as save_checkpoint starts on `epoch` (or right after it saved); returns the real save_checkpoint."""
    save = lstm_mnist.save_checkpoint

    def interrupted(run, out_dir):
        if run.epoch == epoch and not after_saving:
            raise KeyboardInterrupt
        path = save(run, out_dir)
        if run.epoch == epoch:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(lstm_mnist, "save_checkpoint", interrupted)
    return save


# --- --resume repeats the run, or refuses in one line naming the flag and its value ------------


def test_a_one_cycle_run_resumed_with_another_batch_size_is_refused_and_stays_resumable(
        run_main, tiny_data, tmp_path, monkeypatch, capsys):
    args = ["--epochs", "3", "--one-cycle"]
    straight = run_main(*args, out_dir=tmp_path / "straight")
    save = interrupt_at_epoch(monkeypatch, 2)
    with pytest.raises(SystemExit):
        run_main(*args, out_dir=tmp_path / "split")
    monkeypatch.setattr(lstm_mnist, "save_checkpoint", save)
    checkpoint = tmp_path / "split" / "checkpoint.pt"
    before = checkpoint.read_bytes()
    capsys.readouterr()
    # TINY_ARGS has --batch-size 50; a later --batch-size wins.
    err = fails(capsys, [*TINY_ARGS, "--data-dir", tiny_data, "--out-dir", tmp_path / "split", *args, "--resume",
                         "--batch-size", "40"], 1)
    assert "batch_size=50" in err and "--batch-size 50" in err
    assert checkpoint.read_bytes() == before  # a refused resume writes nothing
    resumed = run_main(*args, "--resume", out_dir=tmp_path / "split")
    assert metrics(resumed["history"]) == metrics(straight["history"])
    assert resumed["final_test_acc"] == straight["final_test_acc"]


@pytest.mark.parametrize("flags, named", [
    (["--lr", "0.01"], "--lr 0.001"),
    (["--max-batches", "3"], "no --max-batches"),
    (["--augment"], "no --augment"),
    (["--label-smoothing", "0.1"], "--label-smoothing 0.0"),
])
def test_resume_refuses_what_changes_the_course_of_the_run(flags, named, shared_run, copy_of, tiny_data, capsys):
    out_dir = copy_of(shared_run("--epochs", "1")["out_dir"])
    capsys.readouterr()
    err = fails(capsys, [*TINY_ARGS, "--data-dir", tiny_data, "--out-dir", out_dir, "--epochs", "2",
                         "--resume", *flags], 1)
    assert named in err


def test_a_run_with_max_batches_resumes_only_with_it(run_main, tiny_data, tmp_path, capsys):
    run_main("--epochs", "1", "--max-batches", "3", out_dir=tmp_path / "out")
    capsys.readouterr()
    err = fails(capsys, [*TINY_ARGS, "--data-dir", tiny_data, "--out-dir", tmp_path / "out", "--epochs", "2",
                         "--resume"], 1)
    assert "--max-batches 3" in err
    assert len(run_main("--epochs", "2", "--max-batches", "3", "--resume", out_dir=tmp_path / "out")["history"]) == 2


def test_a_resume_on_other_training_images_is_refused(run_main, tiny_data, tmp_path, capsys):
    run_main("--epochs", "1", out_dir=tmp_path / "out")
    other = tmp_path / "other"
    (other / "MNIST" / "raw").mkdir(parents=True)
    for path in (tiny_data / "MNIST" / "raw").iterdir():
        (other / "MNIST" / "raw" / path.name).write_bytes(path.read_bytes())
    images, labels = make_digits(300, 7)  # 300 training images: 6 steps of 50 per epoch, not 8
    write_idx(other / "MNIST" / "raw" / "train-images-idx3-ubyte", images)
    write_idx(other / "MNIST" / "raw" / "train-labels-idx1-ubyte", labels)
    capsys.readouterr()
    err = fails(capsys, [*TINY_ARGS, "--data-dir", other, "--out-dir", tmp_path / "out", "--epochs", "2",
                         "--resume"], 1)
    assert "8 steps per epoch" in err and "has 6" in err


def test_ctrl_c_right_after_a_save_says_what_was_saved(run_main, tmp_path, monkeypatch, capsys):
    interrupt_at_epoch(monkeypatch, 1, after_saving=True)
    with pytest.raises(SystemExit) as exit_info:
        run_main("--epochs", "3", out_dir=tmp_path / "out")
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "holds epoch 1 intact" in err and "nothing was saved" not in err


# --- A fresh run keeps the run it replaces ----------------------------------------------------


def test_a_fresh_run_keeps_the_previous_runs_files(run_main, tmp_path, capsys):
    out_dir = tmp_path / "out"
    run_main("--epochs", "2", out_dir=out_dir)
    checkpoint, weights = (out_dir / "checkpoint.pt").read_bytes(), (out_dir / "RNN.pth").read_bytes()
    capsys.readouterr()
    run_main("--epochs", "1", "--seed", "1", out_dir=out_dir)
    assert (out_dir / "checkpoint.previous.pt").read_bytes() == checkpoint
    assert (out_dir / "RNN.previous.pth").read_bytes() == weights
    assert torch.load(out_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert (f"kept the finished run before this one (2 epochs) as {out_dir / 'checkpoint.previous.pt'} and "
            f"{out_dir / 'RNN.previous.pth'}") in capsys.readouterr().out


def test_extending_a_finished_run_keeps_it_and_eval_only_keeps_no_copy(run_main, tmp_path, capsys):
    out_dir = tmp_path / "out"
    run_main("--epochs", "1", out_dir=out_dir)
    pair = [(out_dir / name).read_bytes() for name in ("checkpoint.pt", "RNN.pth")]
    capsys.readouterr()
    run_main("--epochs", "2", "--resume", out_dir=out_dir)  # the finished 1-epoch run is kept before it grows
    assert f"kept this run (1 epoch) as {out_dir / 'checkpoint.previous.pt'}" in capsys.readouterr().out
    assert [(out_dir / name).read_bytes() for name in ("checkpoint.previous.pt", "RNN.previous.pth")] == pair
    run_main("--eval-only", out_dir=out_dir)
    assert [(out_dir / name).read_bytes() for name in ("checkpoint.previous.pt", "RNN.previous.pth")] == pair
    assert sorted(path.name for path in out_dir.glob("*.p*")) == [
        "RNN.previous.pth", "RNN.pth", "checkpoint.previous.pt", "checkpoint.pt"]


# --- main() returns the model it tested ---------------------------------------------------------


def accuracy(model, tiny_data):
    images, labels = lstm_mnist.load_split(tiny_data, "mnist", train=False)
    with torch.no_grad():
        return 100.0 * (model.eval()(images).argmax(dim=1) == labels).float().mean().item()


def test_eval_only_returns_the_model_that_scored_the_printed_accuracy(run_main, tiny_data, tmp_path):
    trained = run_main("--epochs", "2", out_dir=tmp_path / "out")
    again = run_main("--eval-only", out_dir=tmp_path / "out")
    assert accuracy(again["model"], tiny_data) == pytest.approx(again["final_test_acc"])
    assert again["final_test_acc"] == trained["final_test_acc"]


def test_with_ema_main_returns_the_average_it_tested(run_main, tiny_data, tmp_path):
    result = run_main("--epochs", "2", "--ema", "0.9", out_dir=tmp_path / "out")
    assert accuracy(result["model"], tiny_data) == pytest.approx(result["final_test_acc"])
    average = torch.load(result["checkpoint"], weights_only=True)["model"]
    assert all(torch.equal(value, result["model"].state_dict()[name]) for name, value in average.items())


# --- The last tracebacks ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["18446744073709551616", "-1"])
def test_a_seed_torch_cannot_take_is_a_usage_error(seed, capsys):
    err = fails(capsys, ["--seed", seed], 2)
    assert "--seed" in err and "2**64 - 1" in err


def test_the_largest_seed_is_taken():
    assert lstm_mnist.parse_args(["--seed", str(2**64 - 1)]).seed == 2**64 - 1


@pytest.mark.parametrize("name, n_dims", [("t10k-labels-idx1-ubyte", 1), ("train-images-idx3-ubyte", 3)])
def test_an_idx_file_of_zero_items_is_refused_in_one_line(name, n_dims, tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "MNIST" / "raw").mkdir(parents=True)
    for path in (tiny_data / "MNIST" / "raw").iterdir():
        (data / "MNIST" / "raw" / path.name).write_bytes(path.read_bytes())
    write_idx(data / "MNIST" / "raw" / name, torch.zeros((0, 28, 28) if n_dims == 3 else (0,), dtype=torch.uint8))
    err = fails(capsys, [*TINY_ARGS, "--data-dir", data, "--out-dir", tmp_path / "out"], 1)
    assert name in err and "holds no" in err


@pytest.fixture
def saved(shared_run, copy_of):
    out_dir = copy_of(shared_run("--epochs", "1")["out_dir"])
    return out_dir, out_dir / "checkpoint.pt"


@pytest.mark.parametrize("damage, words", [
    (lambda c: c.update(hparams=list(c["hparams"].items())), "'hparams'"),
    (lambda c: c.update(rng={}), "random state"),
    (lambda c: c.update(history=[]), "history"),
    (lambda c: c["settings"].pop("batch_size"), "'batch_size'"),
    (lambda c: c.update(optimizer=None), "'optimizer'"),
    (lambda c: c.update(scheduler=[1]), "'scheduler'"),
])
@pytest.mark.parametrize("mode", ["--eval-only", "--resume"])
def test_a_checkpoint_with_every_key_but_wrong_contents_is_refused_in_one_line(
        damage, words, mode, saved, tiny_data, capsys):
    out_dir, path = saved
    checkpoint = torch.load(path, weights_only=True)
    damage(checkpoint)
    torch.save(checkpoint, path)
    capsys.readouterr()
    err = fails(capsys, [*TINY_ARGS, "--data-dir", tiny_data, "--out-dir", out_dir, "--epochs", "2", mode], 1)
    assert str(path) in err and words in err


def test_a_checkpoint_of_an_older_layout_is_refused_in_one_line(saved, tiny_data, capsys):
    out_dir, path = saved
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["format"] = "lstm_mnist checkpoint v1"
    torch.save(checkpoint, path)
    capsys.readouterr()
    err = fails(capsys, [*TINY_ARGS, "--data-dir", tiny_data, "--out-dir", out_dir, "--eval-only"], 1)
    assert "another version of lstm_mnist.py" in err and "v1" in err


# --- Smaller untruths ---------------------------------------------------------------------


def test_reading_png_shows_at_most_two_mistakes_then_right_answers():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    preds = torch.tensor([9, 9, 9, 3, 4, 5, 6, 7, 8, 9])  # the first three are wrong
    chosen = lstm_mnist.pick_for_reading(preds, labels)
    assert chosen == [0, 1, 3, 4, 5, 6]
    assert int((preds[chosen] != labels[chosen]).sum()) == lstm_mnist.N_READING_MISTAKES


def test_the_log_line_prints_the_mean_loss_so_far(tiny_data, capsys):
    images, labels = lstm_mnist.load_split(tiny_data, "mnist", train=True)
    torch.manual_seed(0)
    model = lstm_mnist.RNN(28, 16, 2, 10)
    criterion = torch.nn.CrossEntropyLoss()
    frozen = torch.optim.Adam(model.parameters(), lr=0.0)  # the weights never move
    loader = lstm_mnist.make_loader(images, labels, 50, shuffle=False, max_batches=4)
    lstm_mnist.train_one_epoch(model, loader, criterion, frozen, log_interval=4)
    expected = lstm_mnist.evaluate(model, lstm_mnist.make_loader(images[:200], labels[:200], 50, False), criterion)[0]
    last_batch = lstm_mnist.evaluate(model, lstm_mnist.make_loader(images[150:200], labels[150:200], 50, False),
                                     criterion)[0]
    assert f"{expected:.4f}" != f"{last_batch:.4f}"  # so the test tells the two apart
    assert capsys.readouterr().out.strip().endswith(f"loss {expected:.4f}")


def test_no_bias_under_a_recipe_that_opens_the_forget_gates_names_the_recipe(capsys):
    with pytest.raises(SystemExit) as exit_info:
        lstm_mnist.parse_args(["--recipe", "fast", "--no-bias"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--recipe fast" in err and "--forget-bias 0" in err
    assert lstm_mnist.parse_args(["--recipe", "fast", "--no-bias", "--forget-bias", "0"]).bias is False
    with pytest.raises(SystemExit):  # typed by the user: the old message
        lstm_mnist.parse_args(["--no-bias", "--forget-bias", "1"])
    assert "argument --forget-bias: not allowed with --no-bias" in capsys.readouterr().err


def test_help_under_a_recipe_shows_the_recipes_defaults(capsys):
    with pytest.raises(SystemExit):
        lstm_mnist.parse_args(["--recipe", "fast", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "passes over the training set (default: 3)" in text
    assert "images per training step (default: 50)" in text


def test_help_says_what_one_cycle_does_to_adams_beta1(capsys):
    text = " ".join(lstm_mnist.build_parser().format_help().split())
    assert "beta1" in text and "0.2x --lr" in text


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_files_a_run_writes_follow_the_umask(umask, run_main, tmp_path, monkeypatch):
    # Of the figures, curves.png alone: each is written the same way, by matplotlib's savefig.
    monkeypatch.setattr(lstm_mnist, "draw_figures", lambda model, loader, history, names, out_dir, show:
                        {"curves": lstm_mnist.plot_curves(history, lstm_mnist.Path(out_dir) / "curves.png")})
    old = os.umask(umask)
    try:
        result = run_main("--epochs", "1", out_dir=tmp_path / "out")
    finally:
        os.umask(old)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "out").iterdir()}
    assert modes["checkpoint.pt"] == modes["RNN.pth"] == modes["curves.png"] == 0o666 & ~umask, modes
    assert result["checkpoint"].exists()


# --- Numbers that mean what they say ---------------------------------------------------------


def test_with_label_smoothing_every_test_loss_is_the_plain_cross_entropy(run_main, tiny_data, tmp_path):
    result = run_main("--epochs", "1", "--label-smoothing", "0.2", out_dir=tmp_path / "out")
    images, labels = lstm_mnist.load_split(tiny_data, "mnist", train=False)
    with torch.no_grad():
        plain = torch.nn.functional.cross_entropy(result["model"].eval()(images), labels).item()
    assert result["test_loss"] == pytest.approx(plain, rel=1e-5)
    assert result["history"][-1]["test_loss"] == pytest.approx(plain, rel=1e-5)
    assert result["history"][-1]["label_smoothing"] == 0.2  # curves.png names the smoothed training loss


@pytest.mark.figures
def test_the_final_test_and_the_figures_run_in_float32_even_with_amp(run_main, tmp_path, monkeypatch, capsys):
    class Marked:
        def __enter__(self):
            print("(autocast)")

        def __exit__(self, *exc):
            return False

    def fake_amp(device, amp):
        return lstm_mnist.Precision(Marked(), torch.amp.GradScaler("cpu", enabled=False), "test autocast", None)

    monkeypatch.setattr(lstm_mnist, "amp_context", fake_amp)
    run_main("--epochs", "1", "--amp", out_dir=tmp_path / "out")
    printed = capsys.readouterr().out
    assert "(autocast)" in printed[: printed.index("Final Test")]  # training and the epoch's test
    assert "(autocast)" not in printed[printed.index("Final Test"):]


def test_the_moving_average_warms_up_before_it_reaches_its_decay():
    torch.manual_seed(0)
    model = lstm_mnist.RNN(28, 4, 1, 10)
    ema = lstm_mnist.make_ema(model, 0.999)
    weight = model.classifer.weight
    ema.update_parameters(model)  # the first update copies the weights
    start = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    ema.update_parameters(model)  # after 1 update: d = (1 + 1) / (10 + 1)
    d = 2 / 11
    assert torch.allclose(ema.module.classifer.weight, d * start + (1 - d) * weight, atol=1e-6)
    ema.n_averaged.fill_(10**6)  # long after (1 + n) / (10 + n) passed the decay
    before = ema.module.classifer.weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    ema.update_parameters(model)
    assert torch.allclose(ema.module.classifer.weight, 0.999 * before + 0.001 * weight, atol=1e-6)


def test_the_settled_row_counts_from_the_first_row_with_ink_and_needs_a_probability():
    steps = torch.full((28, 3), 0.1)
    steps[:, 0] = 0.8  # class 0 from row 0 on, surely
    image = torch.zeros(28, 28)
    image[9:20, 10:18] = 1.0  # ink from row 9
    assert lstm_mnist.settled_row(steps, image) == 9
    steps[20:, 0], steps[20:, 1] = 0.3, 0.6  # then class 1 from row 20, with p 0.6
    assert lstm_mnist.settled_row(steps, image) == 20
    steps[25:, 1], steps[25:, 2] = 0.45, 0.25  # still class 1 from row 25, but with p 0.45 < 0.5
    assert lstm_mnist.settled_row(steps, image) is None


def test_curves_png_has_the_error_rate_on_a_log_axis(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kwargs: figures.append(fig))
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 90 + e, "test_loss": 1 / e, "test_acc": 95 + e,
                "label_smoothing": 0.1} for e in (1, 2, 3)]
    lstm_mnist.plot_curves(history, tmp_path / "curves.png")
    axes = figures[0].axes
    assert [ax.get_yscale() for ax in axes] == ["linear", "linear", "log"]
    assert list(axes[2].lines[1].get_ydata()) == pytest.approx([4, 3, 2])  # test error in %
    assert "smoothed" in axes[0].get_legend().get_texts()[0].get_text()


def test_a_cpu_run_never_touches_the_cuda_random_state(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("CUDA touched")

    model = lstm_mnist.RNN(28, 8, 1, 10)
    loaders = {"generator": torch.Generator(), "train": [None] * 8}  # what RunState reads of the loaders
    args = lstm_mnist.parse_args(["--hidden-dim", "8", "--n-layer", "1"])
    run = lstm_mnist.RunState(model, torch.optim.Adam(model.parameters()), lstm_mnist.Levers(), loaders, args)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", no_cuda)
    monkeypatch.setattr(torch.cuda, "get_rng_state", no_cuda)
    assert run.state_dict()["rng"]["cuda"] is None


def test_a_step_the_loss_scaler_skips_leaves_the_schedule_and_the_average_alone():
    torch.manual_seed(0)
    model = lstm_mnist.RNN(28, 8, 1, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # overflows: the step is skipped
    args = lstm_mnist.parse_args(["--one-cycle", "--epochs", "1", "--ema", "0.9"])
    levers = lstm_mnist.Levers(model, optimizer, args, 10, lstm_mnist.Precision(None, scaler, None, None))
    scheduler, ema = levers.scheduler, levers.ema
    before = {name: value.clone() for name, value in model.state_dict().items()}
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 28, 28)), torch.tensor([1, 2, 3, 4])) * 1e10
    optimizer.zero_grad()
    levers.step(loss)
    assert scaler.get_scale() < 2.0**127  # it did overflow
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in before.items())
    assert scheduler.last_epoch == 0 and int(ema.n_averaged) == 0
    scaler.update(1.0)  # now a step that goes through
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 28, 28)), torch.tensor([1, 2, 3, 4]))
    optimizer.zero_grad()
    levers.step(loss)
    assert scheduler.last_epoch == 1 and int(ema.n_averaged) == 1
