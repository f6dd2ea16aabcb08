"""GPUs, Apple GPUs and notebooks, tested on a CPU: the device probes are faked."""

import sys
import types

import pytest
import torch
from conftest import REPO, lstm_mnist

SOURCE = (REPO / "lstm_mnist.py").read_text(encoding="utf-8")
CUDA = torch.device("cuda")
KERNEL_ARGV = ["/usr/lib/python3/dist-packages/ipykernel_launcher.py", "-f", "/root/.local/share/jupyter/kernel-1.json"]


# --- --amp on NVIDIA GPUs -----------------------------------------------------------


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend a CUDA GPU is present; `native_bf16` says whether it has bfloat16 arithmetic.

    Like torch.cuda.is_bf16_supported, the fake answers True by default (emulated bfloat16
    counts) and the truth only with including_emulation=False. `lstm_dtype` is what cuDNN's
    LSTM computes in under autocast: float16 whatever was asked, in torch 2.4 to 2.14.1.
    """

    def install(native_bf16, lstm_dtype=torch.float16):
        asked = []

        def is_bf16_supported(including_emulation=True):
            asked.append(including_emulation)
            return native_bf16 or including_emulation

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
        monkeypatch.setattr(lstm_mnist, "lstm_dtype_under", lambda autocast, device: lstm_dtype)
        return asked

    return install


def test_a_gpu_with_only_emulated_bf16_trains_in_float16_with_gradient_scaling(fake_gpu):
    asked = fake_gpu(native_bf16=False)  # a T4 or a V100
    precision = lstm_mnist.amp_context(CUDA, amp=True)
    assert False in asked  # the native question was asked
    assert isinstance(precision.autocast, torch.autocast) and precision.autocast.fast_dtype == torch.float16
    assert precision.scaler.is_enabled()
    assert precision.label == "autocast float16 with gradient scaling; the LSTM runs in float16"


def test_a_gpu_with_native_bf16_autocasts_in_bf16_and_scales_because_cudnn_runs_the_lstm_in_fp16(fake_gpu):
    fake_gpu(native_bf16=True)  # Ampere or newer, with torch's cuDNN autocast wrapper as of 2.14.1
    precision = lstm_mnist.amp_context(CUDA, amp=True)
    assert precision.autocast.fast_dtype == torch.bfloat16
    assert precision.scaler.is_enabled()  # float16 gradients in the LSTM could underflow otherwise
    assert precision.label == "autocast bfloat16 with gradient scaling; the LSTM runs in float16"


def test_no_scaling_once_the_lstm_really_runs_in_bf16(fake_gpu):
    fake_gpu(native_bf16=True, lstm_dtype=torch.bfloat16)  # should a later torch honour the dtype
    precision = lstm_mnist.amp_context(CUDA, amp=True)
    assert not precision.scaler.is_enabled()
    assert precision.label == "autocast bfloat16; the LSTM runs in bfloat16"


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_a_torch_without_the_including_emulation_keyword_asks_the_compute_capability(
        fake_gpu, monkeypatch, capability, dtype):
    fake_gpu(native_bf16=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # the old signature: no keyword
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert lstm_mnist.amp_context(CUDA, amp=True).autocast.fast_dtype == dtype


def test_the_source_asks_for_native_bf16_before_choosing_bf16_on_cuda():
    amp_context = SOURCE.split("def amp_context(", 1)[1].split("\ndef ", 1)[0]
    assert "cuda_has_native_bf16()" in amp_context
    assert "torch.cuda.is_bf16_supported(including_emulation=False)" in SOURCE
    assert "is_bf16_supported()" not in SOURCE  # the emulation-counting question is never asked


def test_the_device_line_says_what_runs_on_the_gpu(fake_gpu, tmp_path, capsys):
    fake_gpu(native_bf16=False)
    args = lstm_mnist.parse_args(["--amp", "--out-dir", str(tmp_path)])
    lstm_mnist.prepare_run(args, CUDA)
    assert capsys.readouterr().out.splitlines()[0] == \
        "device: cuda (autocast float16 with gradient scaling; the LSTM runs in float16)"


def test_without_amp_a_gpu_gets_no_autocast_and_no_scaling(fake_gpu):
    fake_gpu(native_bf16=True)
    precision = lstm_mnist.amp_context(CUDA, amp=False)
    assert not isinstance(precision.autocast, torch.autocast) and not precision.scaler.is_enabled()
    assert precision.label is None and precision.note is None


@pytest.mark.skipif(not lstm_mnist.cpu_has("_is_avx512_bf16_supported"),
                    reason="oneDNN has no bfloat16 LSTM on a CPU without AVX512-BF16 (it raises)")
def test_the_lstm_dtype_probe_reports_what_the_lstm_computed_in():
    cpu = torch.device("cpu")
    assert lstm_mnist.lstm_dtype_under(lstm_mnist.contextlib.nullcontext(), cpu) == torch.float32
    assert lstm_mnist.lstm_dtype_under(torch.autocast("cpu", dtype=torch.bfloat16), cpu) == torch.bfloat16


# --- --amp on the CPU: unchanged ------------------------------------------------------


@pytest.mark.parametrize("amx", [False, True])
def test_cpu_amp_is_bf16_autocast_without_scaling_where_the_cpu_has_bf16(monkeypatch, tmp_path, capsys, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    lstm_mnist.prepare_run(lstm_mnist.parse_args(["--amp", "--out-dir", str(tmp_path)]), torch.device("cpu"))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "device: cpu (bfloat16 autocast)"
    no_amx_note = ("--amp: this CPU has bfloat16 instructions but no AMX units; whether bfloat16 trains "
                   "faster than float32 here is not known: time an epoch of each")
    assert (printed[1] == no_amx_note) is (not amx)
    precision = lstm_mnist.amp_context(torch.device("cpu"), amp=True)
    assert precision.autocast.fast_dtype == torch.bfloat16 and not precision.scaler.is_enabled()


def test_cpu_amp_falls_back_to_float32_with_a_note_where_the_cpu_lacks_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    precision = lstm_mnist.amp_context(torch.device("cpu"), amp=True)
    assert not isinstance(precision.autocast, torch.autocast) and not precision.scaler.is_enabled()
    assert precision.label is None
    assert precision.note == "--amp: no bfloat16 support on cpu here; training in float32"


# --- Gradient scaling in the training loop, on the CPU -----------------------------------


def test_a_scaler_changes_the_scale_not_the_training(tiny_data):
    """Loss scaling by a power of two is exact: the same weights with and without it, clipping included."""
    images, labels = lstm_mnist.load_split(tiny_data, "mnist", train=True)
    weights = []
    for scaler in (torch.amp.GradScaler("cpu", enabled=False), torch.amp.GradScaler("cpu")):
        torch.manual_seed(0)
        model = lstm_mnist.RNN(28, 16, 2, 10)
        criterion, optimizer = lstm_mnist.make_criterion_and_optimizer(model, 1e-3)
        loader = lstm_mnist.make_loader(images, labels, 50, shuffle=False, max_batches=3)
        precision = lstm_mnist.Precision(lstm_mnist.contextlib.nullcontext(), scaler, None, None)
        one_cycle = lstm_mnist.parse_args(["--one-cycle", "--epochs", "1"])  # clips the gradients
        levers = lstm_mnist.Levers(model, optimizer, one_cycle, 3, precision)
        lstm_mnist.train_one_epoch(model, loader, criterion, optimizer, levers)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_the_loss_scale_is_saved_and_resumed(run_main, monkeypatch, tmp_path):
    """As on a GPU in float16: the checkpoint holds the scaler's state and --resume restores it."""

    def scaled_amp(device, amp):
        return lstm_mnist.Precision(lstm_mnist.contextlib.nullcontext(), torch.amp.GradScaler("cpu", init_scale=1024.0),
                                    "float32 with gradient scaling (test)", None)

    monkeypatch.setattr(lstm_mnist, "amp_context", scaled_amp)
    straight = run_main("--epochs", "2", out_dir=tmp_path / "straight")
    run_main("--epochs", "1", out_dir=tmp_path / "split")
    saved = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["scaler"]
    assert saved["scale"] == 1024.0 and saved["_growth_tracker"] == 8  # 8 steps without an overflow
    resumed = run_main("--epochs", "2", "--resume", out_dir=tmp_path / "split")
    assert resumed["final_test_acc"] == straight["final_test_acc"]
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["scaler"]["_growth_tracker"] == 16


def test_checkpoints_without_amp_record_the_scaler_as_off(shared_run):
    result = shared_run("--epochs", "1")
    assert torch.load(result["checkpoint"], weights_only=True)["scaler"] == {}


# --- Apple GPUs (MPS) -------------------------------------------------------------------


@pytest.mark.parametrize("device, flags, warned", [
    ("mps", ["--dropout", "0.2"], True),  # 2 layers by default
    ("mps", ["--n-layer", "3", "--dropout", "0.5", "--bidirectional"], True),
    ("mps", [], False),  # the tutorial's settings: no dropout
    ("mps", ["--bidirectional", "--n-layer", "3"], False),
    ("cpu", ["--dropout", "0.2"], False),
    ("cuda", ["--dropout", "0.2"], False),
])
def test_the_mps_warning_names_the_lstm_dropout_bugs_where_they_apply(device, flags, warned, tmp_path, capsys):
    lstm_mnist.prepare_run(lstm_mnist.parse_args([*flags, "--out-dir", str(tmp_path)]), torch.device(device))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert len(lines) == int(warned)
    if warned:
        assert lines[0].startswith("warning: ") and "#180744" in lines[0] and "--device cpu" in lines[0]


def test_the_mps_warning_is_printed_after_the_device_line(tmp_path, capsys):
    args = lstm_mnist.parse_args(["--dropout", "0.2", "--out-dir", str(tmp_path)])
    lstm_mnist.prepare_run(args, torch.device("mps"))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "device: mps" and printed[1].startswith("warning: nn.LSTM's dropout")


# --- Notebooks (Jupyter, Colab) -----------------------------------------------------------


@pytest.fixture
def in_a_notebook(monkeypatch):
    """sys.modules holds ipykernel, as in every Jupyter or Colab kernel."""
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))


@pytest.mark.parametrize("argv", [
    KERNEL_ARGV,
    ["/usr/local/lib/python3.12/dist-packages/colab_kernel_launcher.py", "-f", "/root/kernel-2.json"],
    ["/home/me/.venv/lib/python3.12/site-packages/ipykernel_launcher.py", "--f=/run/user/kernel-v3.json"],
])
def test_in_a_notebook_the_kernels_arguments_are_not_parsed(in_a_notebook, monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "argv", argv)
    assert lstm_mnist.command_line(None) == []
    assert "main(['--epochs', '1'])" in capsys.readouterr().out


def test_percent_run_in_a_notebook_still_passes_its_flags(in_a_notebook, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lstm_mnist.py", "--epochs", "1", "--device", "cpu"])  # what %run sets
    assert lstm_mnist.command_line(None) == ["--epochs", "1", "--device", "cpu"]


def test_outside_a_notebook_sys_argv_is_parsed_as_before(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "argv", ["lstm_mnist.py", "--epochs", "3"])
    assert lstm_mnist.command_line(None) == ["--epochs", "3"]
    assert lstm_mnist.command_line(["--lr", 0.01]) == ["--lr", "0.01"]  # explicit arguments win everywhere


def test_main_in_a_notebook_runs_with_the_defaults_instead_of_a_usage_error(in_a_notebook, monkeypatch):
    monkeypatch.setattr(sys, "argv", KERNEL_ARGV)

    class Parsed(Exception):
        pass

    def stop_after_parsing(args, device, argv=()):  # the first step after the arguments are parsed
        raise Parsed(args)

    monkeypatch.setattr(lstm_mnist, "prepare_run", stop_after_parsing)
    with pytest.raises(Parsed) as parsed:
        lstm_mnist.main()  # before: SystemExit(2), "unrecognized arguments: -f ..."
    assert vars(parsed.value.args[0]) == vars(lstm_mnist.parse_args([]))


# --- The device check script ---------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(),
                    reason="an accelerator is present: the script would train on it")
def test_the_device_check_says_there_is_no_accelerator_and_exits_0(capsys):
    sys.path.insert(0, str(REPO / "tests"))
    import device_check

    assert device_check.main([]) == 0
    assert capsys.readouterr().out == "no accelerator present (CUDA or MPS); nothing to check\n"


def test_the_device_check_table_runs_end_to_end_on_the_cpu(tiny_data, monkeypatch, capsys):
    """Its code path, with the CPU standing in for the GPU: tiny data, so no accuracy bar."""
    sys.path.insert(0, str(REPO / "tests"))
    import device_check

    monkeypatch.setattr(device_check, "accelerator", lambda: torch.device("cpu"))
    monkeypatch.setattr(device_check, "describe", lambda device: "GPU: none, the CPU stands in")
    monkeypatch.setattr(device_check, "MIN_ACC", 0.0)
    assert device_check.main(["--data-dir", str(tiny_data)]) == 0
    printed = capsys.readouterr().out.splitlines()
    table = [line for line in printed if line.startswith("| float32") or line.startswith("| --amp")]
    assert len(table) == 2 and "| float32 | float32 | float32 |" in table[0]
    assert printed[-1] == "ok: every run reached 0% test accuracy after one epoch"
