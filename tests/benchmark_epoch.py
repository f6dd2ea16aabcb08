"""Time one epoch of the tutorial's pipeline against lstm_mnist.py's, side by side.

    python tests/benchmark_epoch.py --data-dir DIR            # the table (DIR holds MNIST/raw/)
    python tests/benchmark_epoch.py --data-dir DIR --tutorial-epochs 30 --until 99.0

The table: in one process, after a warm-up, each round times the same number of training
batches and one full test pass for every pipeline in turn (interleaved, so a slow moment
of the machine hits all of them), then extrapolates to a whole epoch of 600 batches:
- tutorial: torchvision MNIST + ToTensor + DataLoader(batch 100, shuffle), fp32, the
  tutorial's loop (a loss.item() per batch), test in batches of 100 under no_grad;
- lstm_mnist fp32: the script's in-memory loaders and its train/evaluate functions;
- lstm_mnist --amp: the same under --amp's autocast (bfloat16 on CPUs that have it; see amp_context).
All rows share one process, so they share its memory allocator settings (lstm_mnist's
keep_cpu_buffers() is applied to the whole process, tutorial included, unless
--default-allocator is given) and the peak memory column includes the data sets that
every pipeline holds.

--tutorial-epochs runs the tutorial's pipeline alone, as a learner would (allocator left as
it is), for whole epochs and prints the test accuracy and the elapsed time after each: the
reference for "time to 99%" and for per-epoch cost measured as (2-epoch run) - (1-epoch run).
Not collected by pytest (its name does not start with test_).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lstm_mnist  # noqa: E402

TRAIN_BATCHES_PER_EPOCH = 600  # 60,000 images / batch 100


# The tutorial's model, as it writes it (with its spelling).
class Rnn(nn.Module):
    def __init__(self, in_dim, hidden_dim, n_layer, n_class):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden_dim, n_layer, batch_first=True)
        self.classifer = nn.Linear(hidden_dim, n_class)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.classifer(out[:, -1, :])


class TutorialPipeline:
    name = "tutorial (ToTensor + DataLoader)"

    def __init__(self, data_dir, device, seed):
        from torchvision import datasets, transforms

        torch.manual_seed(seed)
        self.device = device
        train = datasets.MNIST(data_dir, train=True, transform=transforms.ToTensor())
        test = datasets.MNIST(data_dir, train=False, transform=transforms.ToTensor())
        self.train_loader = DataLoader(train, batch_size=100, shuffle=True)
        self.test_loader = DataLoader(test, batch_size=100, shuffle=False)
        self.model = Rnn(28, 128, 2, 10).to(device)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.batches = iter(())

    def train(self, n_batches):
        self.model.train()
        for _ in range(n_batches):
            try:
                img, label = next(self.batches)
            except StopIteration:  # start another pass, reshuffled
                self.batches = iter(self.train_loader)
                img, label = next(self.batches)
            img, label = img.squeeze(1).to(self.device), label.to(self.device)
            out = self.model(img)
            loss = self.criterion(out, label)
            running_loss = loss.item() * label.size(0)  # the tutorial reads both every batch
            num_correct = (out.argmax(1) == label).sum().item()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return running_loss, num_correct

    def test(self):
        self.model.eval()
        num_correct = 0
        with torch.no_grad():
            for img, label in self.test_loader:
                img, label = img.squeeze(1).to(self.device), label.to(self.device)
                num_correct += (self.model(img).argmax(1) == label).sum().item()
        return 100.0 * num_correct / len(self.test_loader.dataset)


class OurPipeline:
    def __init__(self, data_dir, device, seed, amp):
        self.name = "lstm_mnist --amp" if amp else "lstm_mnist fp32"
        precision = lstm_mnist.amp_context(device, amp)  # on a GPU it runs a small LSTM: before seeding
        self.autocast = precision.autocast
        if amp and not isinstance(self.autocast, torch.autocast):
            self.name += " (fell back to fp32)"
        torch.manual_seed(seed)
        loaders = lstm_mnist.load_data(data_dir, "mnist", device, 100, seed)
        self.train_loader, self.test_loader = loaders["train"], loaders["test"]
        hparams = lstm_mnist.model_hparams(lstm_mnist.parse_args([]))
        self.model = lstm_mnist.build_model(hparams).to(device)
        self.criterion, self.optimizer = lstm_mnist.make_criterion_and_optimizer(self.model, 1e-3)
        self.levers = lstm_mnist.Levers(self.model, self.optimizer, precision=precision)

    def train(self, n_batches):
        self.train_loader.sampler.max_batches = n_batches
        return lstm_mnist.train_one_epoch(self.model, self.train_loader, self.criterion, self.optimizer, self.levers)

    def test(self):
        return lstm_mnist.evaluate(self.model, self.test_loader, self.criterion, self.autocast)[1]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory():
    try:  # Linux: writing 5 resets the process's peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mib():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # elsewhere: the peak of the whole process so far

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def time_call(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def table(args, device):
    pipelines = [TutorialPipeline(args.data_dir, device, args.seed),
                 OurPipeline(args.data_dir, device, args.seed, amp=False),
                 OurPipeline(args.data_dir, device, args.seed, amp=True)]
    for pipeline in pipelines:  # warm-up: first-call costs (kernel set-up, caches)
        pipeline.train(args.warmup)
        pipeline.test()
    results = {p.name: {"train": [], "test": [], "peak": 0.0} for p in pipelines}
    for _ in range(args.rounds):
        for pipeline in pipelines:
            row = results[pipeline.name]
            reset_peak_memory()
            row["train"].append(time_call(lambda: pipeline.train(args.batches), device))
            row["test"].append(time_call(pipeline.test, device))
            row["peak"] = max(row["peak"], peak_memory_mib())
    print(f"device: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.rounds} rounds of {args.batches} training batches + one test pass each, "
          f"after a warm-up of {args.warmup}; medians extrapolated to {TRAIN_BATCHES_PER_EPOCH} batches")
    print(f"| {'pipeline':<36} | s/epoch | train img/s | ratio to tutorial | peak RSS MiB |")
    print(f"|{'-' * 38}|--------:|------------:|------------------:|-------------:|")
    base = None
    for name, row in results.items():
        train = statistics.median(row["train"]) * TRAIN_BATCHES_PER_EPOCH / args.batches
        epoch = train + statistics.median(row["test"])
        base = base or epoch
        print(f"| {name:<36} | {epoch:7.1f} | {60000 / train:11.0f} | {epoch / base:17.2f}x | {row['peak']:12.0f} |")


def tutorial_epochs(args, device):
    """Whole epochs of the tutorial's pipeline, with the test accuracy and elapsed time after each."""
    start = time.perf_counter()
    pipeline = TutorialPipeline(args.data_dir, device, args.seed)
    for epoch in range(1, args.tutorial_epochs + 1):
        pipeline.train(TRAIN_BATCHES_PER_EPOCH)
        acc = pipeline.test()
        print(f"tutorial epoch {epoch:>2} | test acc {acc:.2f}% | elapsed {time.perf_counter() - start:.1f} s",
              flush=True)
        if args.until is not None and acc >= args.until:
            print(f"reached {args.until:.2f}% after {epoch} epochs, {time.perf_counter() - start:.1f} s")
            return


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=lstm_mnist.DEFAULTS["data_dir"], metavar="DIR",
                        help="folder holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=100, help="training batches timed per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=10, help="training batches run before timing")
    parser.add_argument("--default-allocator", action="store_true",
                        help="do not apply lstm_mnist.keep_cpu_buffers() to this process")
    parser.add_argument("--tutorial-epochs", type=int, default=0,
                        help="instead of the table, run the tutorial's pipeline for this many whole epochs")
    parser.add_argument("--until", type=float, default=None,
                        help="with --tutorial-epochs: stop once the test accuracy reaches this (percent)")
    args = parser.parse_args(argv)
    device = lstm_mnist.pick_device(args.device)
    if args.tutorial_epochs:  # the tutorial alone, as a learner runs it: allocator untouched
        tutorial_epochs(args, device)
        return
    if not args.default_allocator:
        lstm_mnist.keep_cpu_buffers()
    table(args, device)


if __name__ == "__main__":
    main()
