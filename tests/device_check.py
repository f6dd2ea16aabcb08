"""Device check: one epoch in float32 and one with --amp, on the GPU (CUDA) or Apple GPU (MPS) present.

    python tests/device_check.py                       # MNIST from ./data (downloaded if missing)
    python tests/device_check.py --data-dir DIR        # a folder holding MNIST/raw/

Prints the GPU and the torch / CUDA / cuDNN versions, then one markdown table with, per
run: seconds for the epoch (train + test), training images per second, test accuracy, the
dtype the LSTM really computed in (seen by a forward hook on model.lstm) and the peak GPU
memory. Exits 1 if a run stays under 94% test accuracy. Without an accelerator it says
so and exits 0. A script, not a pytest test: it needs a GPU and a few minutes.
"""

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import lstm_mnist  # noqa: E402

MIN_ACC = 94.0  # % test accuracy each one-epoch run must reach (about 95.9% on the CPU)
WARMUP_BATCHES = 20  # untimed batches first, so one-time start-up costs stay out of the figures


def accelerator():
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return None


def synchronize(device):
    """Wait for the device to finish its queued work, so that the clock measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def describe(device):
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return (f"GPU: {torch.cuda.get_device_name()} (compute capability {major}.{minor}); torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    return f"GPU: Apple MPS, macOS {platform.mac_ver()[0]} on {platform.machine()}; torch {torch.__version__}"


def one_epoch(device, amp, data_dir, max_batches=None):
    """Train one epoch and test, with lstm_mnist's own functions; returns one row of the table."""
    precision = lstm_mnist.amp_context(device, amp)  # runs a small LSTM on a GPU: before seeding
    torch.manual_seed(0)
    loaders = lstm_mnist.load_data(data_dir, "mnist", device, lstm_mnist.DEFAULTS["batch_size"], 0, max_batches)
    model = lstm_mnist.build_model(lstm_mnist.model_hparams(lstm_mnist.parse_args([]))).to(device)
    criterion, optimizer = lstm_mnist.make_criterion_and_optimizer(model, lstm_mnist.DEFAULTS["lr"])
    lstm_dtypes = set()  # what nn.LSTM's output really was, under the autocast of the run
    hook = model.lstm.register_forward_hook(lambda module, inputs, outputs: lstm_dtypes.add(outputs[0].dtype))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    start = time.perf_counter()
    levers = lstm_mnist.Levers(model, optimizer, precision=precision)
    _, _, num_seen = lstm_mnist.train_one_epoch(model, loaders["train"], criterion, optimizer, levers)
    synchronize(device)
    train_seconds = time.perf_counter() - start
    _, test_acc = lstm_mnist.evaluate(model, loaders["test"], criterion, precision.autocast)
    synchronize(device)
    seconds = time.perf_counter() - start
    hook.remove()
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if device.type == "cuda" else "n/a"
    return {"run": "--amp" if amp else "float32", "precision": precision.label or precision.note or "float32",
            "lstm": ", ".join(lstm_mnist.dtype_name(dtype) for dtype in sorted(lstm_dtypes, key=str)),
            "seconds": seconds, "img_s": num_seen / train_seconds, "acc": test_acc, "peak": peak}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=Path("./data"), type=Path,
                        help="folder holding MNIST/raw/ (default: ./data, as lstm_mnist.py)")
    args = parser.parse_args(argv)
    device = accelerator()
    if device is None:
        print("no accelerator present (CUDA or MPS); nothing to check")
        return 0
    print(describe(device))
    rows = []
    try:
        for amp in (False, True):
            one_epoch(device, amp, args.data_dir, max_batches=WARMUP_BATCHES)  # warm-up, not timed
            rows.append(one_epoch(device, amp, args.data_dir))
    except lstm_mnist.RunError as err:  # no MNIST files there, most likely
        print(f"device_check.py: error: {err}", file=sys.stderr)
        return 1
    print("| run | precision (the device line) | LSTM ran in | s/epoch | train img/s | test acc | peak GPU MiB |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['run']} | {row['precision']} | {row['lstm']} | {row['seconds']:.1f} | {row['img_s']:.0f} "
              f"| {row['acc']:.2f}% | {row['peak']} |")
    failed = [row["run"] for row in rows if row["acc"] < MIN_ACC]
    if failed:
        print(f"FAILED: {', '.join(failed)} under {MIN_ACC:.0f}% test accuracy after one epoch")
        return 1
    print(f"ok: every run reached {MIN_ACC:.0f}% test accuracy after one epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
