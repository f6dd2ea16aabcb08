"""Bad input ends in one actionable line and the right exit code; interrupted work is never lost."""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY_ARGS, fails, lstm_mnist, metrics

SCRIPT = str(REPO / "lstm_mnist.py")
ALL_FILES = lstm_mnist.SPLIT_FILES[True] + lstm_mnist.SPLIT_FILES[False]


@pytest.mark.parametrize("argv,flag", [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "two"], "--epochs"),
    (["--batch-size", "-5"], "--batch-size"),
    (["--hidden-dim", "0"], "--hidden-dim"),
    (["--n-layer", "0"], "--n-layer"),
    (["--log-interval", "0"], "--log-interval"),
    (["--max-batches", "1.5"], "--max-batches"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--dropout", "1"], "--dropout"),
    (["--dropout", "0.5", "--n-layer", "1"], "--dropout"),
    (["--dataset", "cifar10"], "--dataset"),
    (["--device", "tpu"], "--device"),
    (["--resume", "--eval-only"], "--eval-only"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--val-size", "-1"], "--val-size"),
    (["--recipe", "fastest"], "--recipe"),
    (["--weight-decay", "-0.1"], "--weight-decay"),
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--ema", "1.5"], "--ema"),
    (["--forget-bias", "1", "--no-bias"], "--forget-bias"),
])
def test_bad_arguments_exit_2_with_one_line_naming_the_flag(argv, flag, capsys):
    err = fails(capsys, argv, 2)
    assert flag in err and "see --help" in err


@pytest.mark.parametrize("device,available", [
    ("cuda", torch.cuda.is_available), ("mps", torch.backends.mps.is_available)])
def test_an_absent_device_is_refused_before_anything_runs(device, available, capsys):
    if available():
        pytest.skip(f"{device} is present here")
    err = fails(capsys, ["--device", device], 2)
    assert f"{device} is not available" in err and "--device" in err


def test_missing_files_offline_name_the_folder_and_the_four_files(tmp_path, monkeypatch, capsys):
    from torchvision import datasets

    # A mirror that refuses at once: the real download code runs, without any network.
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    err = fails(capsys, [*TINY_ARGS, "--data-dir", tmp_path / "data", "--out-dir", tmp_path / "out"], 1)
    assert str(tmp_path / "data" / "MNIST" / "raw") in err
    assert all(name in err for name in ALL_FILES)


@pytest.fixture
def data_copy(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data / "MNIST", root / "MNIST")
    return root, root / "MNIST" / "raw"


def test_a_truncated_idx_file_is_named(data_copy, tmp_path, capsys):
    root, raw = data_copy
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    err = fails(capsys, [*TINY_ARGS, "--data-dir", root, "--out-dir", tmp_path / "out"], 1)
    assert str(images) in err and "truncated" in err


def test_a_file_that_is_not_idx_is_named(data_copy, tmp_path, capsys):
    root, raw = data_copy
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_text("<html>404 not found</html>")
    err = fails(capsys, [*TINY_ARGS, "--data-dir", root, "--out-dir", tmp_path / "out"], 1)
    assert str(labels) in err and "not an MNIST IDX file" in err


def test_image_and_label_counts_that_differ_are_named(data_copy, tmp_path, capsys):
    from conftest import make_digits, write_idx

    root, raw = data_copy
    write_idx(raw / "t10k-labels-idx1-ubyte", make_digits(150, 3)[1])  # 150 labels for 200 images
    err = fails(capsys, [*TINY_ARGS, "--data-dir", root, "--out-dir", tmp_path / "out"], 1)
    assert "t10k-images-idx3-ubyte" in err and "t10k-labels-idx1-ubyte" in err and "150 labels" in err


def test_an_unwritable_out_dir_fails_before_loading_data(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # The data folder does not exist either: the out-dir check must come first.
    err = fails(capsys, [*TINY_ARGS, "--data-dir", tmp_path / "nowhere", "--out-dir", blocker / "out"], 1)
    assert "cannot write to --out-dir" in err and str(blocker / "out") in err


@pytest.fixture
def trained(shared_run, copy_of):
    """An out-dir holding a checkpoint of one tiny epoch: a copy of the session's, free to damage."""
    out_dir = copy_of(shared_run("--epochs", "1")["out_dir"])
    return out_dir, out_dir / lstm_mnist.CHECKPOINT_NAME


def eval_only(tiny_data, out_dir, *extra):
    return [*TINY_ARGS, "--data-dir", tiny_data, "--out-dir", out_dir, "--eval-only", *extra]


def test_eval_only_without_a_checkpoint_says_to_train_first(tiny_data, tmp_path, capsys):
    err = fails(capsys, eval_only(tiny_data, tmp_path / "empty"), 1)
    assert "no checkpoint at" in err and "train first" in err


def test_a_file_that_is_not_a_checkpoint_is_refused(trained, tiny_data, capsys):
    out_dir, path = trained
    path.write_bytes(os.urandom(2000))
    err = fails(capsys, eval_only(tiny_data, out_dir), 1)
    assert str(path) in err and "not a readable PyTorch checkpoint" in err


def test_a_truncated_checkpoint_is_refused(trained, tiny_data, capsys):
    out_dir, path = trained
    path.write_bytes(path.read_bytes()[:3000])
    err = fails(capsys, eval_only(tiny_data, out_dir), 1)
    assert str(path) in err and "not a readable PyTorch checkpoint" in err


def test_a_foreign_torch_file_is_refused(trained, tiny_data, capsys):
    out_dir, path = trained
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict()}, path)
    err = fails(capsys, eval_only(tiny_data, out_dir), 1)
    assert "not a checkpoint written by lstm_mnist.py" in err


class RunsCode:
    """A pickle that would create a file when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_our_label_but_missing_parts_is_refused(trained, tiny_data, capsys):
    out_dir, path = trained
    torch.save({"format": lstm_mnist.CHECKPOINT_FORMAT, "model": {}}, path)
    err = fails(capsys, eval_only(tiny_data, out_dir), 1)
    assert "not a checkpoint written by lstm_mnist.py" in err


def test_a_malicious_pickle_is_refused_and_its_code_never_runs(trained, tiny_data, tmp_path, capsys):
    out_dir, path = trained
    marker = tmp_path / "pwned"
    torch.save({"format": lstm_mnist.CHECKPOINT_FORMAT, "payload": RunsCode(marker)}, path)
    err = fails(capsys, eval_only(tiny_data, out_dir), 1)
    assert str(path) in err and "could run code" in err
    assert not marker.exists()


def test_a_checkpoint_whose_weights_do_not_fit_is_refused(trained, tiny_data, capsys):
    out_dir, path = trained
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"] = lstm_mnist.RNN(28, 32, 2, 10).state_dict()  # recorded hidden_dim is 16
    torch.save(checkpoint, path)
    err = fails(capsys, eval_only(tiny_data, out_dir), 1)
    assert str(path) in err and "do not fit" in err and "size mismatch" in err


def test_a_checkpoint_of_another_dataset_is_refused(trained, tiny_data, capsys):
    out_dir, path = trained
    err = fails(capsys, eval_only(tiny_data, out_dir, "--dataset", "fashion-mnist"), 1)
    assert "trained on mnist" in err and "--dataset mnist" in err


def test_resuming_with_other_model_flags_is_refused(trained, tiny_data, capsys):
    out_dir, _ = trained
    argv = [*TINY_ARGS, "--data-dir", tiny_data, "--out-dir", out_dir, "--resume", "--epochs", "2",
            "--n-layer", "3"]
    err = fails(capsys, argv, 1)
    assert "n_layer=2" in err and "n_layer=3" in err and "--n-layer" in err


def test_resuming_with_another_recipe_is_refused(trained, tiny_data, capsys):
    out_dir, _ = trained
    base = [*TINY_ARGS, "--data-dir", tiny_data, "--out-dir", out_dir, "--resume", "--epochs", "2"]
    assert "--one-cycle" in fails(capsys, [*base, "--one-cycle"], 1)
    assert "--val-size" in fails(capsys, [*base, "--val-size", "50"], 1)


def test_a_one_cycle_run_resumes_only_to_its_planned_length(run_main, tiny_data, tmp_path, capsys):
    run_main("--epochs", "2", "--one-cycle", out_dir=tmp_path / "cycle")
    argv = [*TINY_ARGS, "--data-dir", tiny_data, "--out-dir", tmp_path / "cycle", "--resume", "--one-cycle",
            "--epochs", "4"]
    assert "resume with --epochs 2" in fails(capsys, argv, 1)


def test_a_validation_split_as_big_as_the_training_set_is_refused(tiny_data, tmp_path, capsys):
    err = fails(capsys, [*TINY_ARGS, "--data-dir", tiny_data, "--out-dir", tmp_path / "out", "--val-size", "400"], 1)
    assert "--val-size 400 leaves no training images" in err


def test_resume_without_a_checkpoint_says_so(tiny_data, tmp_path, capsys):
    err = fails(capsys, [*TINY_ARGS, "--data-dir", tiny_data, "--out-dir", tmp_path / "new", "--resume"], 1)
    assert "no checkpoint at" in err


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)


@pytest.mark.parametrize("args", [
    ["--epochs", "0"],
    ["--lr", "-1"],
    ["--data-dir", "{tmp}/missing", "--out-dir", "{tmp}/out", "--device", "cpu", "--max-batches", "1"],
])
def test_the_real_command_line_prints_no_traceback(args, tmp_path, capsys):
    args = [arg.format(tmp=tmp_path) for arg in args]
    if "--data-dir" in args:
        # A file where the raw/ folder should be: the download fails at once, with no network.
        (tmp_path / "missing" / "MNIST").mkdir(parents=True)
        (tmp_path / "missing" / "MNIST" / "raw").write_text("a file where a folder should be")
    if args == ["--epochs", "0"]:  # one as a real process: sys.argv, the __main__ guard, the exit code
        done = cli(*args)
        returncode, stderr = done.returncode, done.stderr
    else:  # the others in-process: the same main(), the same handler, without starting Python again
        with pytest.raises(SystemExit) as exit_info:
            lstm_mnist.main(args)
        returncode, stderr = exit_info.value.code, capsys.readouterr().err
    assert returncode in (1, 2)
    assert "Traceback" not in stderr and len(stderr.splitlines()) <= 2, stderr


def ctrl_c_as_in_a_terminal():
    """In the child before it starts Python: Ctrl-C's default action and unblocked, whatever pytest passed on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_keeps_the_last_checkpoint_and_resume_finishes_the_same_run(tiny_data, tmp_path, capsys):
    epochs = 40
    args = [*TINY_ARGS, "--data-dir", tiny_data, "--epochs", epochs]
    checkpoint = tmp_path / "split" / lstm_mnist.CHECKPOINT_NAME
    # What the test process passes on about Ctrl-C (a disposition, a blocked mask), for the failure message.
    inherited = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))
    process = subprocess.Popen([sys.executable, SCRIPT, *map(str, args), "--out-dir", tmp_path / "split"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ctrl_c_as_in_a_terminal)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    sent_while_running = process.poll() is None
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, (err, sent_while_running, inherited)
    assert "Traceback" not in err and "--resume" in err and "intact" in err
    saved = torch.load(checkpoint, weights_only=True)  # loadable, and short of the full run
    assert 1 <= saved["epoch"] < epochs
    assert not list(checkpoint.parent.glob("*.tmp"))

    # The printed command resumes it (run in-process here: the process boundary was the Ctrl-C's).
    command = shlex.split(err.split("continue with: ", 1)[1])
    assert command[:2] == [sys.executable, SCRIPT] and command[-1] == "--resume"
    capsys.readouterr()
    lstm_mnist.main(command[2:])
    resumed = capsys.readouterr().out
    straight = lstm_mnist.main([*map(str, args), "--out-dir", str(tmp_path / "straight")])
    assert resumed.splitlines()[-1] == f"final test accuracy: {straight['final_test_acc']:.2f}%"
    assert metrics(torch.load(checkpoint, weights_only=True)["history"]) == metrics(straight["history"])


def test_ctrl_c_outside_training_still_says_what_happened(run_main, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lstm_mnist, "load_split", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        run_main("--epochs", "1")
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "lstm_mnist.py: interrupted\n"


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(trained, monkeypatch):
    out_dir, path = trained
    before = path.read_bytes()

    def dies_midway(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(lstm_mnist.torch, "save", dies_midway)
    args = lstm_mnist.parse_args(["--out-dir", str(out_dir), "--hidden-dim", "16"])
    model = lstm_mnist.RNN(28, 16, 2, 10)
    loaders = {"generator": torch.Generator(), "train": [None] * 8}  # what RunState reads of the loaders
    run = lstm_mnist.RunState(model, torch.optim.Adam(model.parameters()), lstm_mnist.Levers(), loaders, args)
    run.epoch = 2
    with pytest.raises(KeyboardInterrupt):
        lstm_mnist.save_checkpoint(run, out_dir)
    assert run.saved_epoch == 0
    assert path.read_bytes() == before
    assert sorted(p.name for p in out_dir.iterdir() if p.suffix == ".tmp") == []

