"""Shared fixtures: tiny IDX data sets written by the tests, and a helper to run main()."""

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import lstm_mnist  # noqa: E402

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
