"""Shared fixtures: tiny IDX data sets written by the tests, and a helper to run main()."""

import contextlib
import io
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import lstm_mnist  # noqa: E402

# One thread: the tiny models of the tests run faster on one (two threads spend their time waiting on each other),
# and on a busy machine a waiting thread spins for a core another test needs. The child processes of the tests too.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

# The real MNIST files, beside the checkout (read-only); tests that need them skip elsewhere.
REAL_DATA = REPO.parent / "shared" / "data"
HAS_REAL_DATA = all((REAL_DATA / "MNIST" / "raw" / name).is_file()
                    for name in lstm_mnist.SPLIT_FILES[True] + lstm_mnist.SPLIT_FILES[False])

N_TRAIN, N_TEST = 400, 200  # images in the tiny data set
TINY_ARGS = ["--device", "cpu", "--hidden-dim", "16", "--batch-size", "50", "--log-interval", "4"]


def write_idx(path, tensor):
    """Write a uint8 tensor as an IDX file, the format of the MNIST files."""
    header = bytes([0, 0, 8, tensor.dim()]) + b"".join(n.to_bytes(4, "big") for n in tensor.shape)
    path.write_bytes(header + bytes(tensor.flatten().tolist()))


def make_digits(n, seed):
    """n fake 28x28 'digits': class k is a bright bar across rows 2k+4 and 2k+5, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator)
    images = torch.randint(0, 60, (n, 28, 28), generator=generator)
    for i, label in enumerate(labels.tolist()):
        images[i, 2 * label + 4 : 2 * label + 6, 3:25] = 255
    return images.to(torch.uint8), labels.to(torch.uint8)


def write_dataset(root, class_name="MNIST"):
    raw = root / class_name / "raw"
    raw.mkdir(parents=True)
    for train, n, seed in ((True, N_TRAIN, 1), (False, N_TEST, 2)):
        images, labels = make_digits(n, seed)
        images_name, labels_name = lstm_mnist.SPLIT_FILES[train]
        write_idx(raw / images_name, images)
        write_idx(raw / labels_name, labels)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A data root holding tiny MNIST and FashionMNIST folders in torchvision's layout."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, "MNIST")
    write_dataset(root, "FashionMNIST")
    return root


def pytest_configure(config):
    config.addinivalue_line("markers", "figures: main() draws its figures in this test (skipped elsewhere: "
                                       "drawing them takes most of a tiny run's time)")


class FiguresNotDrawn:
    """main()'s "figures" in a test not marked `figures`: using it fails, saying why."""

    def __getattr__(self, name):
        raise AssertionError("main() drew no figures in this test: mark it @pytest.mark.figures")

    __getitem__ = __iter__ = __len__ = __getattr__


def no_figures(*args, **kwargs):
    """Stands in for lstm_mnist.draw_figures where a test does not look at the figures."""
    return FiguresNotDrawn()


@pytest.fixture(autouse=True)
def figures_only_where_marked(request, monkeypatch):
    """main() draws the figures only in tests marked `figures`; tests/test_inside.py draws each one on its own."""
    if request.node.get_closest_marker("figures") is None:
        monkeypatch.setattr(lstm_mnist, "draw_figures", no_figures)


@pytest.fixture(scope="session")
def shared_run(tiny_data, tmp_path_factory):
    """main() on the tiny data, once per set of flags for the whole session, for tests that only read its result.

    Returns run(*flags) -> main()'s result; its "out_dir" is the run's folder: copy it before changing anything.
    """
    results = {}

    def run(*flags):
        key = tuple(map(str, flags))
        if key not in results:
            out_dir = tmp_path_factory.mktemp("shared")
            with pytest.MonkeyPatch.context() as patch:  # session fixtures start outside a test's patches
                patch.setattr(lstm_mnist, "draw_figures", no_figures)
                result = lstm_mnist.main([*TINY_ARGS, "--data-dir", str(tiny_data), "--out-dir", str(out_dir), *key])
            results[key] = {**result, "out_dir": out_dir}
        return results[key]

    return run


REAL_DRAW_FIGURES = lstm_mnist.draw_figures


@pytest.fixture(scope="session")
def drawn_run(tiny_data, tmp_path_factory):
    """One 2-epoch run that draws every figure, started from an empty folder: what it printed, returned and wrote.

    Shared by the tests that read a whole run's output; copy "out_dir" before changing anything.
    """
    out_dir, cwd = tmp_path_factory.mktemp("drawn"), tmp_path_factory.mktemp("cwd")
    data_before = sorted(p.relative_to(tiny_data) for p in tiny_data.rglob("*"))
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(lstm_mnist, "draw_figures", REAL_DRAW_FIGURES)
        patch.chdir(cwd)  # nothing may be written there
        result = lstm_mnist.main([*TINY_ARGS, "--data-dir", str(tiny_data), "--out-dir", str(out_dir), "--epochs", "2"])
    return {"result": result, "printed": printed.getvalue().splitlines(), "out_dir": out_dir, "cwd": cwd,
            "data_before": data_before}


@pytest.fixture
def copy_of(tmp_path):
    """copy_of(out_dir) -> a copy of a run's folder in this test's tmp_path, free to change."""

    def copy(out_dir):
        target = tmp_path / f"copy-{out_dir.name}"
        shutil.copytree(out_dir, target)
        return target

    return copy


@pytest.fixture
def run_main(tiny_data, tmp_path):
    """Call lstm_mnist.main() in-process on the tiny data with small, fast settings."""

    def run(*args, out_dir=None, data_dir=None):
        out_dir = out_dir or tmp_path / "out"
        return lstm_mnist.main([*TINY_ARGS, "--data-dir", str(data_dir or tiny_data),
                                "--out-dir", str(out_dir), *map(str, args)])

    return run


def fails(capsys, argv, code):
    """Run main(argv), expect SystemExit(code), and return the single line it printed on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        lstm_mnist.main([str(arg) for arg in argv])
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def metrics(history):
    """The history without the wall times, which differ between identical runs."""
    return [{key: value for key, value in row.items() if key != "seconds"} for row in history]


# --- A model trained briefly on the real data (tests/test_predict.py, tests/test_draw.py) ----------
N_PER_KIND = 100  # disguised test digits per kind
REAL_BATCHES = 300  # batches of 100 real training digits for the model that reads them (about 96%)


@pytest.fixture(scope="session")
def real_model():
    """A small model trained briefly on real MNIST, and the last test digits (skipped without the real data).

    Shared by --predict's and --draw's tests: trained once per session.
    """
    if not HAS_REAL_DATA:
        pytest.skip(f"real MNIST not in {REAL_DATA}")
    images, labels = lstm_mnist.load_split(REAL_DATA, "mnist", train=True)
    torch.manual_seed(0)
    model = lstm_mnist.build_model(lstm_mnist.model_hparams(lstm_mnist.parse_args(["--hidden-dim", "32"])))
    optimizer = torch.optim.Adam(model.parameters())
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=REAL_BATCHES)
    for batch in torch.randperm(len(images))[: REAL_BATCHES * 100].view(REAL_BATCHES, 100):
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    test_images, test_labels = lstm_mnist.load_split(REAL_DATA, "mnist", train=False)
    return model.eval(), test_images[-N_PER_KIND:], test_labels[-N_PER_KIND:]
