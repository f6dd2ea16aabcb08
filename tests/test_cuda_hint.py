"""A run that falls back to the CPU on a machine with an NVIDIA GPU says why, in one line under `device: cpu`.

The GPU is faked: a stand-in `nvidia-smi` put first on the PATH, and torch's CUDA probes
patched. Where the machine itself shows a sign of an NVIDIA GPU, the checks that need its
absence skip themselves.
"""

import os
import shutil

import pytest
import torch
from conftest import lstm_mnist
LINUX_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidia0")


def machine_shows_nvidia(path=None):
    """True where the machine itself (not a stand-in) has nvidia-smi on `path` or the Linux driver's files."""
    return shutil.which("nvidia-smi", path=path) is not None or any(map(os.path.exists, LINUX_DRIVER_FILES))


def stand_in_nvidia_smi(folder):
    """Write a do-nothing `nvidia-smi` (and a .bat twin for Windows) in `folder`; return the folder."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\necho 'stand-in nvidia-smi'\n")
    script.chmod(0o755)
    (folder / "nvidia-smi.bat").write_text("@echo stand-in nvidia-smi\n")
    return folder


@pytest.fixture
def fake_gpu_machine(tmp_path, monkeypatch):
    """An NVIDIA GPU by its sign (nvidia-smi first on the PATH) that torch cannot use."""
    folder = stand_in_nvidia_smi(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(folder) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cpu_only_build_says_install_the_cuda_build(fake_gpu_machine, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    hint = lstm_mnist.cuda_hint()
    assert "NVIDIA" in hint and "CPU-only" in hint and "CUDA build" in hint
    assert "README" in hint and "\n" not in hint


def test_cuda_build_that_cannot_see_the_gpu_says_driver_or_visibility(fake_gpu_machine, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hint = lstm_mnist.cuda_hint()
    assert "NVIDIA" in hint and "CUDA 12.4" in hint and "driver" in hint and "no device is visible" in hint
    assert "CPU-only" not in hint and "\n" not in hint
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "CUDA_VISIBLE_DEVICES=''" in lstm_mnist.cuda_hint()


def test_no_hint_without_a_sign_of_an_nvidia_gpu(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for cuda in (None, "12.4"):
        monkeypatch.setattr(torch.version, "cuda", cuda)
        assert lstm_mnist.cuda_hint(driver_files=()) is None
        assert lstm_mnist.cuda_hint(driver_files=(str(tmp_path / "no-such-file"),)) is None


def test_no_hint_when_cuda_is_usable(fake_gpu_machine, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert lstm_mnist.cuda_hint() is None


def printed_by_prepare_run(argv, device, tmp_path, capsys):
    args = lstm_mnist.parse_args([*argv, "--out-dir", str(tmp_path / "out")])
    lstm_mnist.prepare_run(args, torch.device(device))
    return capsys.readouterr().out.splitlines()


def test_prepare_run_prints_the_hint_under_the_device_line_for_auto_only(fake_gpu_machine, monkeypatch, tmp_path,
                                                                          capsys):
    monkeypatch.setattr(torch.version, "cuda", None)
    lines = printed_by_prepare_run(["--device", "auto"], "cpu", tmp_path, capsys)
    assert lines[0] == "device: cpu" and "NVIDIA" in lines[1], lines
    # --device cpu is the user's own choice: nothing to explain.
    lines = printed_by_prepare_run(["--device", "cpu"], "cpu", tmp_path, capsys)
    assert lines[0] == "device: cpu" and not any("NVIDIA" in line for line in lines), lines


def run_one_batch(tiny_data, tmp_path, path, monkeypatch, capsys):
    """A 1-batch run with --device auto and this PATH (main() reads the PATH as it starts); its stdout lines."""
    monkeypatch.setenv("PATH", path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto must come out as cpu even on a GPU box
    lstm_mnist.main(["--device", "auto", "--epochs", "1", "--max-batches", "1", "--hidden-dim", "8",
                     "--batch-size", "20", "--data-dir", str(tiny_data), "--out-dir", str(tmp_path / "out")])
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    return printed.out.splitlines()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="--device auto picks MPS on this Mac")
def test_command_line_with_a_stand_in_nvidia_smi(tiny_data, tmp_path, monkeypatch, capsys):
    folder = stand_in_nvidia_smi(tmp_path / "bin")
    lines = run_one_batch(tiny_data, tmp_path, str(folder) + os.pathsep + os.environ.get("PATH", ""), monkeypatch,
                          capsys)
    at = lines.index("device: cpu")
    assert "NVIDIA" in lines[at + 1] or "CUDA" in lines[at + 1], lines[at:at + 2]


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="--device auto picks MPS on this Mac")
def test_command_line_without_a_stand_in_prints_no_hint(tiny_data, tmp_path, monkeypatch, capsys):
    path = os.environ.get("PATH", "")
    if machine_shows_nvidia(path):
        pytest.skip("this machine has an NVIDIA GPU of its own, so the hint is due here")
    lines = run_one_batch(tiny_data, tmp_path, path, monkeypatch, capsys)
    at = lines.index("device: cpu")
    assert not any("NVIDIA" in line or "CUDA" in line for line in lines[at + 1:at + 2]), lines[at:at + 2]
    assert not any("NVIDIA" in line for line in lines), lines
