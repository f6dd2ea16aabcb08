"""Nothing lost, round two: the last finished run is kept, every failure is one line, every message is true."""

import errno
import os
import re
import shlex
import subprocess
import sys
import types
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
    assert kept == [f"kept the unfinished run before this one (epoch 1 of 3) as {out_dir / 'checkpoint.unfinished.pt'}; "
                    f"the last finished run stays in {out_dir / 'checkpoint.previous.pt'} and RNN.previous.pth"]
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
    assert (f"kept the finished run before this one (1 epoch) as {out_dir / 'checkpoint.previous.pt'} and "
            f"{out_dir / 'RNN.previous.pth'}") in capsys.readouterr().out
    assert [(out_dir / name).read_bytes() for name in ("checkpoint.previous.pt", "RNN.previous.pth")] == c_pair


def ctrl_c_in_epoch(monkeypatch, epoch):
    """Make the next run stop with Ctrl-C during its `epoch`-th epoch of this process (1: before any save)."""
    train = lstm_mnist.train_one_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return train(*args, **kwargs)

    monkeypatch.setattr(lstm_mnist, "train_one_epoch", interrupted)


def pair_bytes(out_dir, kind="current"):
    return [(out_dir / name).read_bytes() for name in lstm_mnist.PAIRS[kind]]


def run_steps(run_main, monkeypatch, capsys, out_dir, steps):
    """Run each (flags, epoch of Ctrl-C or None) in turn; returns every line starting "kept" or "removed"."""
    lines = []
    for seed, (flags, stop) in enumerate(steps):
        with monkeypatch.context() as patch:
            if stop:
                ctrl_c_in_epoch(patch, stop)
            seeded = flags if "--resume" in flags else [*flags, "--seed", seed]
            if stop:
                with pytest.raises(SystemExit):
                    run_main(*seeded, out_dir=out_dir)
            else:
                run_main(*seeded, out_dir=out_dir)
        lines += [line for line in capsys.readouterr().out.splitlines() if line.startswith(("kept", "removed"))]
    return lines


def files_named_exist(lines, out_dir):
    """Every path a printed line names exists."""
    for line in lines:
        for path in re.findall(rf"{re.escape(str(out_dir))}/[\w.]+", line):
            assert Path(path).exists(), line


def test_the_last_finished_run_survives_extending_it_and_interrupted_runs(run_main, tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "out"
    lines = run_steps(run_main, monkeypatch, capsys, out_dir, [
        (["--epochs", 2], None),  # A: finished
        (["--epochs", 2], 2),  # B: fresh, Ctrl-C in epoch 2
        (["--epochs", 2], 1),  # C: fresh, Ctrl-C in epoch 1
        (["--epochs", 2], 2),  # D: fresh, Ctrl-C in epoch 2
    ])
    lines += run_steps(run_main, monkeypatch, capsys, out_dir, [(["--epochs", 2, "--resume"], None)])  # D: 2/2
    d_pair = pair_bytes(out_dir)
    lines += run_steps(run_main, monkeypatch, capsys, out_dir, [
        (["--epochs", 4, "--resume"], 2),  # D extended: Ctrl-C in epoch 4 (epoch 3 saved)
        (["--epochs", 2], 2),  # E
        (["--epochs", 2], 2),  # F
    ])
    assert pair_bytes(out_dir, "previous") == d_pair  # D, the last finished run, whole
    assert lstm_mnist.read_pair(out_dir, "previous")["finished"]
    assert not (out_dir / "RNN.pth").exists() and not lstm_mnist.read_pair(out_dir, "unfinished")["paired"]
    assert f"kept this run (2 epochs) as {out_dir / 'checkpoint.previous.pt'} and {out_dir / 'RNN.previous.pth'}" \
        in lines
    assert lines[-1].endswith(f"the last finished run stays in {out_dir / 'checkpoint.previous.pt'} and "
                              f"RNN.previous.pth")
    files_named_exist(lines, out_dir)
    model, words = lstm_mnist.load_trained(lstm_mnist.parse_args(["--out-dir", str(out_dir)]), [])
    assert words == (f"{out_dir / 'RNN.previous.pth'} (2 epochs, {out_dir / 'checkpoint.previous.pt'}, the last "
                     f"finished run: {out_dir / 'checkpoint.pt'} holds an unfinished one)")


def test_a_run_shortened_by_resume_is_finished_and_kept(run_main, tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "out"
    run_steps(run_main, monkeypatch, capsys, out_dir, [
        (["--epochs", 3], 2),  # G: Ctrl-C in epoch 2 of 3
        (["--epochs", 1, "--resume"], None),  # G ends after its 1 epoch
    ])
    assert lstm_mnist.read_pair(out_dir)["finished"]
    g_pair = pair_bytes(out_dir)
    lines = run_steps(run_main, monkeypatch, capsys, out_dir, [(["--epochs", 1], None)])
    assert lines == [f"kept the finished run before this one (1 epoch) as {out_dir / 'checkpoint.previous.pt'} and "
                     f"{out_dir / 'RNN.previous.pth'}"]
    assert pair_bytes(out_dir, "previous") == g_pair


def test_a_rename_that_fails_while_keeping_leaves_the_finished_pair_as_it_was(run_main, tmp_path, monkeypatch,
                                                                                capsys):
    out_dir = tmp_path / "out"
    run_main("--epochs", 1, "--seed", 5, out_dir=out_dir)
    (out_dir / "RNN.previous.pth").write_bytes(b"an older finished run's weights")
    before = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    replace = os.replace

    def immutable(src, dst):  # what chattr +i RNN.pth does to a rename of it
        if Path(src).name == "RNN.pth":
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(src))
        replace(src, dst)

    monkeypatch.setattr(lstm_mnist.os, "replace", immutable)
    with pytest.raises(SystemExit) as exit_info:
        run_main("--epochs", 1, "--seed", 6, out_dir=out_dir)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1
    assert f"cannot keep the finished run before this one (1 epoch) as *.previous.* ({out_dir / 'RNN.pth'}: " \
           f"Operation not permitted); nothing was changed" in err
    assert {path.name: path.read_bytes() for path in out_dir.iterdir()} == before  # no mixed pair, no new file


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
        replace = os.replace

        def locked(src, dst):
            if Path(dst).name == "checkpoint.pt":
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src, None, dst)
            replace(src, dst)

        monkeypatch.setattr(lstm_mnist.os, "replace", locked)
        cause = "Permission denied"
    # The finished 1-epoch run is extended: its first save keeps it as *.previous.* just before the
    # new checkpoint.pt takes the name, so a failed rename leaves it there, whole.
    err = fails(capsys, argv(tiny_data, out_dir, "--epochs", "2", "--resume"), 1)
    path = out_dir / "checkpoint.pt"
    kept = "the checkpoint.pt already there is intact" if where == "write" else "nothing was written"
    assert err == f"lstm_mnist.py: error: cannot write {path} ({cause}); {kept}\n"
    assert (path if where == "write" else out_dir / "checkpoint.previous.pt").read_bytes() == before
    assert not list(out_dir.glob("*.tmp"))


def with_file_size_limit(limit, tiny_data, out_dir, *args):
    """Run the script in a child process that may write files of at most `limit` bytes (RLIMIT_FSIZE):
    a write beyond it fails as on a full disk (Python ignores SIGXFSZ, so the write fails with EFBIG)."""
    import resource

    return subprocess.run([sys.executable, str(REPO / "lstm_mnist.py"), *argv(tiny_data, out_dir, *args)],
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is Unix only")
def test_a_real_file_size_limit_ends_in_one_line_and_keeps_the_files_there(shared_run, copy_of, tiny_data):
    out_dir = copy_of(shared_run("--epochs", "1")["out_dir"])
    before = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    sizes = {name: len(data) for name, data in before.items()}
    # checkpoint.pt is larger than RNN.pth: a limit between the two stops the checkpoint only.
    done = with_file_size_limit((sizes["RNN.pth"] + sizes["checkpoint.pt"]) // 2, tiny_data, out_dir,
                                "--epochs", "2", "--resume")
    path = out_dir / "checkpoint.pt"
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1] == (f"lstm_mnist.py: error: cannot write {path} (File too large); "
                                            f"the checkpoint.pt already there is intact")
    assert {path.name: path.read_bytes() for path in out_dir.iterdir() if "previous" not in path.name} == before
    # --eval-only writes RNN.pth alone: a limit below its size stops it there.
    done = with_file_size_limit(sizes["RNN.pth"] // 2, tiny_data, out_dir, "--eval-only")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr == (f"lstm_mnist.py: error: cannot write {out_dir / 'RNN.pth'} (File too large); "
                           f"the RNN.pth already there is intact\n")
    assert (out_dir / "RNN.pth").read_bytes() == before["RNN.pth"] and not list(out_dir.glob("*.tmp"))


def test_a_figure_that_cannot_be_written_is_named(tmp_path, monkeypatch, capsys):
    import matplotlib.figure

    def full(self, *args, **kwargs):  # what a file size limit or a full disk gives: no file name in it
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    model = lstm_mnist.build_model(lstm_mnist.model_hparams(lstm_mnist.parse_args(["--hidden-dim", "8"])))
    images = torch.rand(4, 28, 28)
    with pytest.raises(lstm_mnist.RunError, match=f"cannot write {tmp_path / 'scores.png'} \\(File too large\\)"):
        lstm_mnist.plot_scores(model, images[0], 3, lstm_mnist.DATASETS["mnist"][1], tmp_path / "scores.png")


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


def resume_command(argv):
    """What Ctrl-C in the second epoch prints after "continue with: "."""
    with pytest.raises(KeyboardInterrupt) as interrupt:
        with lstm_mnist.explain_interrupt(types.SimpleNamespace(out_dir="out", saved_epoch=1), argv, {}):
            raise KeyboardInterrupt
    return str(interrupt.value).split("continue with: ")[1]


def test_the_resume_command_runs_from_any_folder_on_this_system(monkeypatch):
    args = ["--out-dir", "my runs/one", "--epochs", "3"]
    posix = resume_command(args)
    assert shlex.split(posix) == [sys.executable, str(SCRIPT.resolve()), *args, "--resume"]
    monkeypatch.setattr(sys, "platform", "win32")  # Windows: cmd's quoting, not the shell's
    windows = resume_command(args)
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
    levers = lstm_mnist.Levers(model, optimizer, lstm_mnist.parse_args(["--one-cycle", "--epochs", "1"]), 10)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 28, 28)), torch.tensor([1, 2, 3, 4])) * 1e4
    optimizer.zero_grad()
    levers.step(loss)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm <= lstm_mnist.CLIP_NORM * (1 + 1e-4)


def test_one_epoch_is_said_in_the_singular(run_main, tmp_path, monkeypatch, capsys):
    run_main("--epochs", "1", out_dir=tmp_path / "out")
    capsys.readouterr()
    run_main("--epochs", "1", "--resume", out_dir=tmp_path / "out")
    assert "the checkpoint already has 1 epoch; raise --epochs to train more" in capsys.readouterr().out
    monkeypatch.setattr(lstm_mnist, "final_test", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(SystemExit):
        run_main("--epochs", "1", out_dir=tmp_path / "again")
    assert f"{tmp_path / 'again' / 'checkpoint.pt'} holds 1 epoch; finish" in capsys.readouterr().err


def test_a_finished_run_saved_before_the_run_record_is_kept_as_finished(run_main, tmp_path, capsys):
    out_dir = tmp_path / "out"
    run_main("--epochs", "1", out_dir=out_dir)
    checkpoint = torch.load(out_dir / "checkpoint.pt", weights_only=True)
    del checkpoint["run"]  # as an earlier version of the script wrote it
    torch.save(checkpoint, out_dir / "checkpoint.pt")
    pair = pair_bytes(out_dir)
    capsys.readouterr()
    run_main("--epochs", "1", "--seed", "1", out_dir=out_dir)
    assert "kept the finished run before this one (1 epoch)" in capsys.readouterr().out
    assert pair_bytes(out_dir, "previous") == pair


def test_files_that_are_not_ours_are_kept_not_removed(run_main, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "checkpoint.pt").write_bytes(b"not a checkpoint of this script")
    torch.save(lstm_mnist.RNN(28, 16, 2, 10).state_dict(), out_dir / "RNN.pth")  # the tutorial's own file, say
    weights = (out_dir / "RNN.pth").read_bytes()
    run_main("--epochs", "1", out_dir=out_dir)
    assert (f"kept the files before this run as {out_dir / 'checkpoint.unfinished.pt'} and "
            f"{out_dir / 'RNN.unfinished.pth'}") in capsys.readouterr().out
    assert (out_dir / "RNN.unfinished.pth").read_bytes() == weights
