"""Nothing lost, round two: the last finished run is kept, every failure is one line, every message is true."""

import errno
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_ARGS, fails, lstm_mnist, make_digits

SCRIPT = REPO / "lstm_mnist.py"


def argv(tiny_data, out_dir, *args):
    return [*TINY_ARGS, "--data-dir", str(tiny_data), "--out-dir", str(out_dir), *args]


def interrupted_after_first_save(monkeypatch):
    """Ctrl-C right after a run saved its first epoch; returns the real save_checkpoint."""
    save = lstm_mnist.save_checkpoint

    def interrupted(run, out_dir):
        path = save(run, out_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(lstm_mnist, "save_checkpoint", interrupted)
    return save


# --- The last finished run is kept, as a pair from that one run ---------------------------------


def test_finished_then_interrupted_then_fresh_keeps_the_finished_pair(run_main, tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "out"
    run_main("--epochs", "2", out_dir=out_dir)  # A: finished
    finished = {name: (out_dir / name).read_bytes() for name in ("checkpoint.pt", "RNN.pth")}
    save = interrupted_after_first_save(monkeypatch)
    with pytest.raises(SystemExit):
        run_main("--epochs", "3", "--seed", "1", out_dir=out_dir)  # B: fresh, Ctrl-C after its first save
    monkeypatch.setattr(lstm_mnist, "save_checkpoint", save)
    unfinished = (out_dir / "checkpoint.pt").read_bytes()
    assert not (out_dir / "RNN.pth").exists()
    capsys.readouterr()
    run_main("--epochs", "1", "--seed", "2", out_dir=out_dir)  # C: fresh
    kept = [line for line in capsys.readouterr().out.splitlines() if line.startswith("kept ")]
    assert kept == [f"kept the unfinished run before this one as {out_dir / 'checkpoint.unfinished.pt'} "
                    f"(the last finished run stays in *.previous.*)"]
    # A's pair, both files from A; B apart, under a name that says so; C in place.
    assert (out_dir / "checkpoint.previous.pt").read_bytes() == finished["checkpoint.pt"]
    assert (out_dir / "RNN.previous.pth").read_bytes() == finished["RNN.pth"]
    assert (out_dir / "checkpoint.unfinished.pt").read_bytes() == unfinished
    assert not (out_dir / "RNN.unfinished.pth").exists()
    assert torch.load(out_dir / "checkpoint.pt", weights_only=True)["settings"]["seed"] == 2
    # C finished: the next fresh run keeps C's pair as the finished one, and says so.
    c_pair = [(out_dir / name).read_bytes() for name in ("checkpoint.pt", "RNN.pth")]
    capsys.readouterr()
    run_main("--epochs", "1", "--seed", "3", out_dir=out_dir)
    assert f"kept the finished run before this one as {out_dir / 'checkpoint.previous.pt'} and RNN.previous.pth" \
        in capsys.readouterr().out
    assert [(out_dir / name).read_bytes() for name in ("checkpoint.previous.pt", "RNN.previous.pth")] == c_pair


def test_a_run_whose_figures_were_interrupted_is_not_taken_for_finished_without_its_weights(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "RNN.previous.pth").write_bytes(b"an older finished run's weights")
    torch.save({"epoch": 3, "settings": {"epochs": 3}}, out_dir / "checkpoint.pt")  # no RNN.pth beside it
    lstm_mnist.keep_previous_run(out_dir)
    assert (out_dir / "checkpoint.unfinished.pt").exists() and (out_dir / "RNN.previous.pth").exists()
    (out_dir / "RNN.pth").write_bytes(b"weights")
    torch.save({"epoch": 3, "settings": {"epochs": 3}}, out_dir / "checkpoint.pt")
    lstm_mnist.keep_previous_run(out_dir)
    assert (out_dir / "RNN.previous.pth").read_bytes() == b"weights"
    assert sorted(p.name for p in out_dir.iterdir()) == ["RNN.previous.pth", "checkpoint.previous.pt",
                                                        "checkpoint.unfinished.pt"]


# --- One line for every failure ---------------------------------------------------------------------


def test_a_data_file_the_user_cannot_read_is_named_with_the_reason(tiny_data, tmp_path, monkeypatch, capsys):
    images = tiny_data / "MNIST" / "raw" / "train-images-idx3-ubyte"
    real_open = open

    def no_permission(path, *args, **kwargs):  # what open() raises without read permission
        if str(path) == str(images):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_permission)
    err = fails(capsys, argv(tiny_data, tmp_path / "out"), 1)
    assert err == f"lstm_mnist.py: error: {images}: Permission denied\n"


def test_an_unreadable_raw_folder_is_one_line_for_real(tiny_data, tmp_path, capsys):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (tiny_data / "MNIST" / "raw").iterdir():
        (raw / path.name).write_bytes(path.read_bytes())
    raw.chmod(0)
    try:
        if os.access(raw / "train-images-idx3-ubyte", os.R_OK):
            pytest.skip("this user reads files whatever their mode (root, CAP_DAC_OVERRIDE)")
        err = fails(capsys, argv(tmp_path / "data", tmp_path / "out"), 1)
        assert str(raw) in err and "Permission denied" in err
    finally:
        raw.chmod(0o755)


def test_an_unreadable_checkpoint_is_not_called_truncated(shared_run, copy_of, tiny_data, monkeypatch, capsys):
    out_dir = copy_of(shared_run("--epochs", "1")["out_dir"])
    path = out_dir / "checkpoint.pt"

    def no_permission(f, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(f))

    monkeypatch.setattr(lstm_mnist.torch, "load", no_permission)
    err = fails(capsys, argv(tiny_data, out_dir, "--eval-only"), 1)
    assert err == f"lstm_mnist.py: error: {path}: Permission denied\n"


@pytest.mark.parametrize("where", ["write", "replace"])
def test_a_checkpoint_that_cannot_be_written_says_the_last_one_is_intact(
        where, shared_run, copy_of, tiny_data, monkeypatch, capsys):
    out_dir = copy_of(shared_run("--epochs", "1")["out_dir"])
    before = (out_dir / "checkpoint.pt").read_bytes()
    if where == "write":  # a full disk
        def full(obj, f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(lstm_mnist.torch, "save", full)
        cause = "No space left on device"
    else:  # a checkpoint.pt held open by another program, on Windows
        def locked(src, dst):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src, None, dst)

        monkeypatch.setattr(lstm_mnist.os, "replace", locked)
        cause = "Permission denied"
    err = fails(capsys, argv(tiny_data, out_dir, "--epochs", "2", "--resume"), 1)
    path = out_dir / "checkpoint.pt"
    assert err == f"lstm_mnist.py: error: cannot write {path} ({cause}); the checkpoint.pt already there is intact\n"
    assert path.read_bytes() == before and not list(out_dir.glob("*.tmp"))


def refuses_huge_allocations():
    """True where the kernel refuses an allocation beyond RAM and swap at once (Linux, overcommit 0 or 2);
    elsewhere it may grant it and kill the process when the pages are touched."""
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip() in ("0", "2")
    except OSError:
        return False


@pytest.mark.skipif(not refuses_huge_allocations(), reason="this system might grant 640 GB, then kill the tests")
@pytest.mark.parametrize("extra", [[], ["--show-shapes"]])
def test_a_model_too_big_for_memory_names_the_flags_to_lower(extra, tiny_data, tmp_path, capsys):
    # 4 gates x 200000 x 200000 float32 weights: 640 GB, which the allocator refuses at once.
    err = fails(capsys, argv(tiny_data, tmp_path / "out", "--hidden-dim", "200000", *extra), 1)
    assert "out of memory (asked for 640000000000 bytes)" in err
    assert "--batch-size" in err and "--hidden-dim" in err


@pytest.mark.parametrize("error, asked", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                            "3.81 GiB of which 1.02 GiB is free."), "2.00 GiB"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried "
                  "to allocate 640000000000 bytes."), "640000000000 bytes"),  # Windows' words
])
def test_out_of_memory_on_a_gpu_or_windows_names_the_flags_to_lower(error, asked, run_main, monkeypatch, capsys):
    def no_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(lstm_mnist, "train_one_epoch", no_memory)
    with pytest.raises(SystemExit) as exit_info:
        run_main("--epochs", "1")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"out of memory (asked for {asked})" in err and "lower --batch-size or --hidden-dim" in err


def test_another_runtime_error_keeps_its_traceback(run_main, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(lstm_mnist, "train_one_epoch", bug)
    with pytest.raises(RuntimeError, match="mat1"):
        run_main("--epochs", "1")


@pytest.mark.parametrize("mode", ["--eval-only", "--resume"])
def test_a_history_row_without_what_the_figures_read_is_refused(mode, shared_run, copy_of, tiny_data, capsys):
    out_dir = copy_of(shared_run("--epochs", "1")["out_dir"])
    path = out_dir / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["history"][0]["test_acc"]
    torch.save(checkpoint, path)
    err = fails(capsys, argv(tiny_data, out_dir, "--epochs", "2", mode), 1)
    assert str(path) in err and "history" in err and "test_acc" in err


def test_a_legacy_processed_folder_is_not_what_the_run_trains_on(tiny_data, tmp_path):
    data = tmp_path / "data"
    (data / "MNIST" / "raw").mkdir(parents=True)
    for path in (tiny_data / "MNIST" / "raw").iterdir():
        (data / "MNIST" / "raw" / path.name).write_bytes(path.read_bytes())
    # What torchvision before 0.9 left beside raw/: 5 images, which torchvision's MNIST would load.
    (data / "MNIST" / "processed").mkdir()
    for name in ("training.pt", "test.pt"):
        torch.save(make_digits(5, 9), data / "MNIST" / "processed" / name)
    from torchvision import datasets

    assert len(datasets.MNIST(data, train=True)) == 5  # the trap
    for train, n in ((True, 400), (False, 200)):
        images, labels = lstm_mnist.load_split(data, "mnist", train=train)
        raw_images, raw_labels = lstm_mnist.load_split(tiny_data, "mnist", train=train)
        assert len(images) == n and torch.equal(images, raw_images) and torch.equal(labels, raw_labels)


# --- Messages that say what is true ------------------------------------------------------------------


def test_a_finished_one_cycle_run_does_not_say_raise_epochs(run_main, tmp_path, capsys):
    run_main("--epochs", "2", "--one-cycle", out_dir=tmp_path / "out")
    capsys.readouterr()
    run_main("--epochs", "2", "--one-cycle", "--resume", out_dir=tmp_path / "out")
    printed = capsys.readouterr().out
    assert "the checkpoint already has 2 epochs; its one-cycle schedule is complete" in printed
    assert "raise --epochs" not in printed


@pytest.mark.parametrize("step", ["final_test", "draw_figures"])
def test_ctrl_c_after_training_says_how_to_finish_with_eval_only(step, run_main, tiny_data, tmp_path, monkeypatch,
                                                                 capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real_step = getattr(lstm_mnist, step)
    monkeypatch.setattr(lstm_mnist, step, interrupted)
    with pytest.raises(SystemExit) as exit_info:
        run_main("--epochs", "2", out_dir=tmp_path / "out")
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    expected = shlex.join([sys.executable, str(SCRIPT), *argv(tiny_data, tmp_path / "out", "--epochs", "2"),
                           "--eval-only"])
    assert err == (f"lstm_mnist.py: interrupted after training: {tmp_path / 'out' / 'checkpoint.pt'} holds all 2 "
                   f"epochs; finish the final test and the figures with: {expected}\n")
    monkeypatch.setattr(lstm_mnist, step, real_step)
    # The printed command finishes the run without training again.
    capsys.readouterr()
    assert lstm_mnist.main(shlex.split(expected)[2:])["final_test_acc"] >= 0
    assert "epoch " not in capsys.readouterr().out


def test_the_resume_command_runs_from_any_folder_on_this_system(monkeypatch):
    args = ["--out-dir", "my runs/one", "--epochs", "3"]
    posix = lstm_mnist.interrupt_message(1, "c.pt", args).split("continue with: ")[1]
    assert shlex.split(posix) == [sys.executable, str(SCRIPT.resolve()), *args, "--resume"]
    monkeypatch.setattr(sys, "platform", "win32")  # Windows: cmd's quoting, not the shell's
    windows = lstm_mnist.interrupt_message(1, "c.pt", args).split("continue with: ")[1]
    assert windows == subprocess.list2cmdline([sys.executable, str(SCRIPT.resolve()), *args, "--resume"])
    assert '"my runs/one"' in windows and "'" not in windows


def test_a_resume_with_another_seed_keeps_the_original_record(run_main, tmp_path):
    run_main("--epochs", "1", out_dir=tmp_path / "out")
    run_main("--epochs", "2", "--resume", "--seed", "7", "--forget-bias", "2", out_dir=tmp_path / "out")
    settings = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)["settings"]
    assert (settings["seed"], settings["forget_bias"], settings["epochs"]) == (0, 0.0, 2)


def test_recipe_without_a_value_is_one_line(capsys):
    err = fails(capsys, ["--recipe"], 2)
    assert "--recipe" in err and "expected one argument" in err


def test_a_damaged_optimizer_state_is_not_called_weights_that_do_not_fit(shared_run, copy_of, tiny_data, capsys):
    out_dir = copy_of(shared_run("--epochs", "1")["out_dir"])
    path = out_dir / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["optimizer"]["param_groups"][0]["params"] = [0]  # one parameter, for a model of many
    torch.save(checkpoint, path)
    err = fails(capsys, argv(tiny_data, out_dir, "--epochs", "2", "--resume"), 1)
    assert "do not fit" not in err and "is damaged" in err and "parameter group" in err


def test_a_record_of_the_wrong_type_is_called_damaged_not_another_value(shared_run, copy_of, tiny_data,
                                                                          capsys):
    out_dir = copy_of(shared_run("--epochs", "1")["out_dir"])
    path = out_dir / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hparams"]["hidden_dim"] = "16"
    torch.save(checkpoint, path)
    err = fails(capsys, argv(tiny_data, out_dir, "--eval-only"), 1)
    assert "asks for" not in err and "is damaged" in err and "'16'" in err


def test_the_cuda_hint_does_not_say_a_selected_gpu_is_hidden(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    hint = lstm_mnist.cuda_hint(driver_files=(str(SCRIPT),))  # any file that exists stands in for the driver's
    assert "hides" not in hint and "CUDA_VISIBLE_DEVICES='0' (the GPUs CUDA may use)" in hint


def test_predictions_png_of_three_test_images_has_no_empty_axes(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kwargs: figures.append(fig))
    torch.manual_seed(0)
    model = lstm_mnist.RNN(28, 8, 1, 10)
    lstm_mnist.plot_predictions(model, torch.rand(3, 28, 28), torch.tensor([1, 2, 3]),
                                lstm_mnist.DATASETS["mnist"][1], tmp_path / "p.png")
    axes = figures[0].axes
    assert len(axes) == lstm_mnist.N_GRID and sum(bool(ax.images) for ax in axes) == 3
    assert not any(ax.axison for ax in axes)  # no frame, ticks or blank box anywhere


def test_one_cycle_clips_the_gradients():
    torch.manual_seed(0)
    model = lstm_mnist.RNN(28, 8, 1, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    levers = lstm_mnist.Levers(model, optimizer, scheduler=lstm_mnist.make_scheduler(optimizer, 1e-3, 1, 10))
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 28, 28)), torch.tensor([1, 2, 3, 4])) * 1e4
    optimizer.zero_grad()
    levers.step(loss)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm <= lstm_mnist.CLIP_NORM * (1 + 1e-4)
