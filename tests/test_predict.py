"""--predict: a person's own digit images, read the way MNIST's digits were made.

The disguised digits are MNIST test digits turned into the images a person would make
(scaled up, dark ink on light paper, a transparent PNG, a JPEG photo, a small digit in a
big page), written by the tests themselves. Run as a script, this file writes such a
folder: `python tests/test_predict.py FOLDER [N] --data-dir DIR` (tests/README.md).
"""

import re
import struct
import sys
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageOps, features

from conftest import N_PER_KIND, REAL_DATA, fails, lstm_mnist

LINE = re.compile(r"^(.+): pred (\d) \((\d+\.\d)%\), then (\d) \((\d+\.\d)%\)$")
KINDS = ["scaled", "paper", "transparent", "photo", "small", "sideways"]
SUFFIX = {"scaled": ".png", "paper": ".gif", "transparent": ".png", "photo": ".jpg", "small": ".webp",
          "sideways": ".jpg"}
EXIF_ORIENTATION = 0x0112  # the EXIF tag a phone sets instead of turning the pixels
ROTATED_90_CW = 6  # its value for "turn the stored image 90 degrees clockwise to show it"


def as_image(levels):
    """A (H, W) tensor of levels 0..255 as a Pillow "L" image."""
    return Image.fromarray(levels.round().clamp(0, 255).to(torch.uint8).numpy())


def disguise(digit, kind, seed):
    """A (28, 28) MNIST digit in [0, 1] made into the image a person might save: a Pillow image."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "scaled":  # the digit scaled up five times, nothing else: white on black
        return as_image(scaled(digit, 5) * 255)
    if kind == "paper":  # dark ink (20) on light paper (245), in a page with margins; a GIF has a palette
        return as_image(on_page(scaled(digit, 5), (200, 220), 245, 20, generator)).convert("P")
    if kind == "transparent":  # a drawing app's PNG: black ink whose alpha is the ink, on nothing
        alpha = as_image(scaled(digit, 5) * 255)
        return Image.merge("RGBA", [Image.new("L", alpha.size, 0)] * 3 + [alpha])
    if kind in ("photo", "sideways"):  # a photo of dark ink (45) on grey paper (185), with grain, saved as JPEG
        page = on_page(scaled(digit, 5), (220, 200), 185, 45, generator)
        photo = as_image(page + torch.randn(page.shape, generator=generator) * 6)
        return photo if kind == "photo" else photo.transpose(Image.Transpose.ROTATE_90)  # stored sideways
    if kind == "small":  # the digit at its own size, off-centre in a big white page
        return as_image(on_page(digit, (300, 400), 255, 0, generator))
    raise ValueError(kind)


def scaled(digit, factor):
    """The digit `factor` times bigger, smoothly (bicubic): (28 * factor, 28 * factor)."""
    return torch.nn.functional.interpolate(digit[None, None], scale_factor=factor, mode="bicubic")[0, 0].clamp(0, 1)


def on_page(digit, size, paper, ink, generator):
    """The digit's ink, of level `ink`, on a page of level `paper` and `size` (H, W), at a random place."""
    page = torch.full(size, float(paper))
    top, left = (int(torch.randint(0, n - m + 1, (), generator=generator)) for n, m in zip(size, digit.shape))
    page[top : top + digit.shape[0], left : left + digit.shape[1]] -= digit * (paper - ink)
    return page


def save_disguised(image, kind, path):
    if kind == "sideways":  # the pixels lie on their side; the EXIF tag says how to turn them
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = ROTATED_90_CW
        image.save(path, quality=85, exif=exif)
    else:
        image.save(path, **({"quality": 85} if path.suffix in (".jpg", ".webp") else {}))
    return path


def read_back(image, kind, tmp_path, name="digit"):
    """What --predict makes of the disguised image once saved to its format and read again."""
    path = save_disguised(image, kind, tmp_path / f"{name}{SUFFIX[kind]}")
    return lstm_mnist.to_mnist(lstm_mnist.open_image(path))


def centre_of_mass(image):
    rows, cols = torch.arange(28.0), torch.arange(28.0)
    mass = image.sum()
    return float((image.sum(dim=1) * rows).sum() / mass), float((image.sum(dim=0) * cols).sum() / mass)


def ink_box(image):
    rows, cols = image.amax(dim=1).nonzero().flatten(), image.amax(dim=0).nonzero().flatten()
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def assert_made_like_mnist(image):
    assert image.shape == (28, 28) and image.dtype == torch.float32
    assert float(image.min()) == 0 and float(image.max()) == 1
    row, col = centre_of_mass(image)
    assert abs(row - lstm_mnist.CENTRE) <= 0.5 and abs(col - lstm_mnist.CENTRE) <= 0.5, (row, col)
    assert abs(row - 13.5) <= 1 and abs(col - 13.5) <= 1  # within a pixel of the middle of 28 pixels
    assert max(ink_box(image)) == 20 and min(ink_box(image)) >= 1


# --- Without the real data: drawn strokes -----------------------------------------------


def drawn_seven(size=600, width=4, ink=20, paper=235):
    """A 7 drawn with a thin pen, dark on light paper, off-centre in a big page."""
    page = Image.new("L", (size, size), paper)
    ImageDraw.Draw(page).line([(150, 120), (330, 120), (210, 460)], fill=ink, width=width)
    return page


def stroke_width(image):
    """The mean stroke width in pixels of a 28x28: area / half the edge length, at half brightness."""
    strokes = torch.nn.functional.pad(image > 0.5, (1, 1, 1, 1)).float()
    edges = (strokes[1:] != strokes[:-1]).sum() + (strokes[:, 1:] != strokes[:, :-1]).sum()
    return float(2 * strokes.sum() / edges)


def test_a_thin_drawn_seven_becomes_an_mnist_digit_with_visible_strokes():
    image = lstm_mnist.to_mnist(drawn_seven())
    assert_made_like_mnist(image)
    # Unthickened, a 4-pixel pen in a 340-pixel digit would be a quarter pixel wide at 20x20.
    assert stroke_width(image) >= 1.2
    assert int(image.argmax()) // 28 < 14  # the bar of the 7 is at the top: upright


def test_light_paper_or_dark_paper_transparent_or_sideways_give_the_same_digit(tmp_path):
    drawn = drawn_seven()
    same = lstm_mnist.to_mnist(drawn)
    inverted = lstm_mnist.to_mnist(ImageOps.invert(drawn))
    alpha = ImageOps.invert(drawn)  # the ink opaque, the page transparent, its hidden colour black
    transparent = Image.merge("RGBA", [Image.new("L", drawn.size, 0)] * 3 + [alpha])
    sideways = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATED_90_CW
    drawn.transpose(Image.Transpose.ROTATE_90).save(sideways, quality=95, exif=exif)
    for other in (inverted, lstm_mnist.to_mnist(transparent), lstm_mnist.to_mnist(lstm_mnist.open_image(sideways))):
        assert_made_like_mnist(other)
        assert (other - same).abs().mean() < 0.03


def test_a_noisy_photo_of_a_seven_is_cropped_to_the_ink_not_to_the_grain():
    page = torch.full((500, 500), 170.0)
    page[100:130, 120:380] = 40  # the bar of a 7, 30 pixels thick
    page[100:420, 350:380] = 40  # its stem
    page += torch.randn(page.shape, generator=torch.Generator().manual_seed(0)) * 8
    image = lstm_mnist.to_mnist(as_image(page))
    assert_made_like_mnist(image)
    assert ink_box(image) == (20, 16)  # 320 x 260 pixels of ink -> 20 x 16.25, the grain left out


def smudged_page():
    """White paper with a faint grey smudge (15 levels darker) in the middle: no digit."""
    page = torch.full((200, 300), 250.0)
    page[80:120, 120:180] = 235
    return as_image(page)


@pytest.mark.parametrize("page", [Image.new("L", (300, 200), 250), Image.new("RGBA", (50, 50), (0, 0, 0, 0)),
                                  as_image(torch.full((300, 300), 200.0) + torch.randn(300, 300) * 6),
                                  smudged_page()], ids=["white", "transparent", "grainy", "smudged"])
def test_a_blank_page_has_no_ink(page):
    assert lstm_mnist.to_mnist(page) is None


# --- The command line: a trained model in --out-dir, and bad input -------------------


@pytest.fixture
def tiny_model(shared_run, copy_of):
    """A copy of an --out-dir holding RNN.pth and checkpoint.pt of one tiny epoch on the fake data."""
    return copy_of(shared_run("--epochs", "1")["out_dir"])


def predict_argv(out_dir, *paths):
    return ["--predict", *map(str, paths), "--out-dir", str(out_dir), "--device", "cpu", "--hidden-dim", "16"]


def test_predict_prints_one_line_per_image_and_draws_predict_png(tiny_model, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    drawn_seven().save(folder / "seven.png")
    ImageOps.invert(drawn_seven(width=30)).save(folder / "seven-thick.bmp")
    (folder / "notes.txt").write_text("not an image, and not picked from a folder")
    before = {path.name: path.read_bytes() for path in tiny_model.iterdir()}
    result = lstm_mnist.main(predict_argv(tiny_model, folder, folder / "seven.png"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"model: {tiny_model / 'RNN.pth'} (1 epoch, {tiny_model / 'checkpoint.pt'}), on cpu"
    assert [LINE.match(line).group(1) for line in lines[1:4]] == \
        [str(folder / "seven-thick.bmp"), str(folder / "seven.png"), str(folder / "seven.png")]
    assert lines[4] == f"saved {tiny_model / 'predict.png'}" and len(lines) == 5
    assert result["figure"] == tiny_model / "predict.png" and result["figure"].stat().st_size > 10_000
    first, top_two = result["predictions"][0], LINE.match(lines[1]).groups()
    assert first["pred"] == int(top_two[1]) and f"{100 * first['probs'].max():.1f}" == top_two[2]
    after = {path.name: path.read_bytes() for path in tiny_model.iterdir()}
    assert after == {**before, "predict.png": after["predict.png"]}  # nothing trained, nothing else written


def test_predict_png_of_a_bidirectional_model_says_there_is_no_row_by_row_reading(tmp_path):
    lstm_mnist.use_windows(False)
    model = lstm_mnist.RNN(28, 8, 1, 10, bidirectional=True).eval()
    digit = lstm_mnist.to_mnist(drawn_seven())
    done = [{"path": tmp_path / "seven.png", "given": drawn_seven(), "digit": digit, "probs": torch.full((10,), 0.1),
             "pred": 7}]
    lstm_mnist.plot_predict(model, done, tmp_path / "predict.png")
    assert (tmp_path / "predict.png").stat().st_size > 5_000


def test_the_default_run_has_no_predict_setting():
    # --predict is left out of args unless given, so the config line of every other run is unchanged.
    assert "predict" not in vars(lstm_mnist.parse_args([]))


def bomb(path):
    """A 1 x 1 PNG whose header claims 10000 x 10000 pixels, more than Pillow lets pass without a warning."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 10000, 10000)  # IHDR's width and height, after the signature and chunk head
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the chunk's checksum
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("name, said", [
    ("missing.png", "no such file or folder"),
    ("empty-folder", "no image in this folder"),
    ("notes.png", "not an image Pillow can read"),
    ("truncated.jpg", "not an image Pillow can read"),
    ("blank.png", "no ink found (a blank page?)"),
    ("bomb.png", "too big to read safely"),
])
def test_each_bad_image_gets_one_line_naming_it(name, said, tiny_model, tmp_path, capsys):
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "notes.png").write_text("a text file named .png")
    drawn_seven().save(tmp_path / "whole.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:600])
    Image.new("RGB", (400, 300), "white").save(tmp_path / "blank.png")
    bomb(tmp_path / "bomb.png")
    err = fails(capsys, predict_argv(tiny_model, tmp_path / name), 1)
    assert err.startswith(f"lstm_mnist.py: error: {tmp_path / name}: {said}"), err


def test_good_images_are_still_predicted_and_each_bad_one_is_named(tiny_model, tmp_path, capsys):
    drawn_seven().save(tmp_path / "good.png")
    (tmp_path / "notes.png").write_text("a text file named .png")
    with pytest.raises(SystemExit) as exit_info:
        lstm_mnist.main(predict_argv(tiny_model, tmp_path / "missing.png", tmp_path / "good.png",
                                     tmp_path / "notes.png"))
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    assert LINE.match(out.splitlines()[1]).group(1) == str(tmp_path / "good.png")
    assert (tiny_model / "predict.png").exists()
    assert err.splitlines() == [f"lstm_mnist.py: error: {tmp_path / 'missing.png'}: no such file or folder",
                                f"lstm_mnist.py: error: {tmp_path / 'notes.png'}: not an image Pillow can read "
                                f"(cannot identify image file {str(tmp_path / 'notes.png')!r})"]


def test_without_a_trained_model_it_says_to_train_first(tmp_path, capsys):
    err = fails(capsys, ["--predict", tmp_path, "--out-dir", tmp_path / "empty"], 1)
    assert f"no trained model in {tmp_path / 'empty'}" in err
    assert f"train first: {lstm_mnist.shell_command(['--out-dir', str(tmp_path / 'empty')])}" in err
    assert str(lstm_mnist.Path(lstm_mnist.__file__).resolve()) in err  # the script's real path, as resume's


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    drawn_seven().save(tmp_path / "seven.png")
    return tiny_model


def test_other_model_flags_are_refused(model_copy, tmp_path, capsys):
    err = fails(capsys, [*predict_argv(model_copy, tmp_path / "seven.png"), "--n-layer", "3"], 1)
    assert "n_layer=2" in err and "leave --n-layer out" in err and "or pass --n-layer 2" in err
    assert "model:" not in capsys.readouterr().out  # refused before any model line


def test_the_model_flags_left_out_are_the_checkpoints(model_copy, tmp_path, capsys):
    # The checkpoint records --hidden-dim 16: --predict without it builds that model, not the default 128.
    result = lstm_mnist.main(["--predict", str(tmp_path / "seven.png"), "--out-dir", str(model_copy),
                              "--device", "cpu"])
    assert len(result["predictions"]) == 1 and "error" not in capsys.readouterr().err


def test_an_rnn_pth_of_another_model_is_refused(model_copy, tmp_path, capsys):
    torch.save(lstm_mnist.RNN(28, 32, 2, 10).state_dict(), model_copy / "RNN.pth")  # checkpoint.pt says 16
    err = fails(capsys, predict_argv(model_copy, tmp_path / "seven.png"), 1)
    assert f"{model_copy / 'RNN.pth'} does not hold the weights {model_copy / 'checkpoint.pt'} records" in err
    assert err.count("\n") == 1 and "not of one run" in err


def test_an_rnn_pth_alone_is_read_with_the_model_flags_given(model_copy, tmp_path, capsys):
    (model_copy / lstm_mnist.CHECKPOINT_NAME).unlink()  # as the tutorial's own script leaves it
    result = lstm_mnist.main(predict_argv(model_copy, tmp_path / "seven.png"))
    assert "no checkpoint.pt: the model flags given" in capsys.readouterr().out
    assert len(result["predictions"]) == 1


class RunsCode:
    """A pickle that creates a file when it is loaded without weights_only."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_an_rnn_pth_holding_code_is_refused_and_its_code_never_runs(model_copy, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    torch.save({"lstm.weight_ih_l0": RunsCode(marker)}, model_copy / "RNN.pth")
    err = fails(capsys, predict_argv(model_copy, tmp_path / "seven.png"), 1)
    assert f"{model_copy / 'RNN.pth'} refused" in err and "could run code" in err
    assert not marker.exists()


def test_a_fashion_model_is_refused_for_digits(tmp_path, capsys):
    err = fails(capsys, ["--predict", tmp_path, "--dataset", "fashion-mnist", "--out-dir", tmp_path], 1)
    assert "needs a model trained on mnist" in err


# --- With the real data: disguised MNIST test digits (real_model: conftest.py) ------------


def shifted_similarity(back, images):
    """The cosine similarity of each pair, at the best of the nine shifts by up to a pixel: (N,)."""
    padded = torch.nn.functional.pad(back, (1, 1, 1, 1))
    shifts = [padded[:, 1 + dy : 29 + dy, 1 + dx : 29 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    cosine = torch.nn.functional.cosine_similarity
    return torch.stack([cosine(shift.flatten(1), images.flatten(1)) for shift in shifts]).amax(dim=0)


WEBP = pytest.mark.skipif(not features.check("webp"), reason="this Pillow was built without WebP")


@pytest.mark.parametrize("kind", [pytest.param(kind, marks=WEBP) if SUFFIX[kind] == ".webp" else kind
                                  for kind in KINDS])
def test_disguised_test_digits_come_back_close_and_are_read_alike(kind, real_model, tmp_path):
    model, images, labels = real_model
    back = torch.stack([read_back(disguise(image, kind, seed=i), kind, tmp_path) for i, image in enumerate(images)])
    for image in back:
        row, col = centre_of_mass(image)
        assert abs(row - 13.5) <= 1 and abs(col - 13.5) <= 1 and max(ink_box(image)) <= 20
    # Close to the originals, give or take the resampling and a pixel's shift (MNIST's shifts are
    # whole pixels too, so a centre of mass at 13.5 may go either way).
    similarity = shifted_similarity(back, images)
    assert float(similarity.median()) > 0.95 and float(similarity.min()) > 0.85, similarity.sort().values[:5]
    with torch.inference_mode():
        agree = (model(back).argmax(dim=1) == model(images).argmax(dim=1)).float().mean()
    assert agree >= 0.95, f"{kind}: {agree:.0%} read alike"


N_PHOTOGRAPHED = 20  # test digits per kind of photographed page (tests/photo_pages.py)


def photographed_answers(model, images, kind):
    """The model's answers for the test digits on photographed pages of `kind`: (N_PHOTOGRAPHED,)."""
    import photo_pages

    pages = [photo_pages.photographed(image, kind, seed=i) for i, image in enumerate(images[:N_PHOTOGRAPHED])]
    with torch.inference_mode():
        return model(torch.stack([lstm_mnist.to_mnist(page) for page in pages])).argmax(dim=1)


@pytest.fixture(scope="module")
def clean_answers(real_model):
    return photographed_answers(real_model[0], real_model[1], "clean")


@pytest.mark.parametrize("kind", ["fall20", "shadow60", "shadow-sharp", "vignette", "ruled-margin", "grid", "table",
                                  "edge", "thick", "thin"])
def test_photographed_test_digits_get_the_clean_pages_answer(kind, real_model, clean_answers):
    same = int((photographed_answers(real_model[0], real_model[1], kind) == clean_answers).sum())
    assert same >= 0.9 * N_PHOTOGRAPHED, f"{kind}: {same} of {N_PHOTOGRAPHED} get the clean page's answer"


def write_folder(folder, n, data_dir=REAL_DATA):
    """n MNIST test digits, disguised in turn as each kind, named <index>-<label>-<kind>.<suffix>."""
    images, labels = lstm_mnist.load_split(data_dir, "mnist", train=False)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        name = f"{i:04d}-{int(labels[i])}-{kind}{SUFFIX[kind]}"
        save_disguised(disguise(images[i], kind, seed=i), kind, folder / name)


def test_a_fashion_checkpoint_is_refused_without_advice_that_would_fail(shared_run, copy_of, tmp_path, capsys):
    out_dir = copy_of(shared_run("--epochs", "1", "--dataset", "fashion-mnist")["out_dir"])
    drawn_seven().save(tmp_path / "seven.png")
    err = fails(capsys, predict_argv(out_dir, tmp_path / "seven.png"), 1)
    assert "was trained on fashion-mnist" in err and "needs a model trained on mnist" in err
    assert "--dataset" not in err  # --predict --dataset fashion-mnist would be refused in turn


def test_after_an_interrupted_run_it_reads_the_last_finished_one_and_says_so(shared_run, copy_of, tmp_path, capsys):
    out_dir = copy_of(shared_run("--epochs", "1")["out_dir"])
    for name in ("checkpoint", "RNN"):  # as a fresh run's first save leaves them, interrupted
        kind = ".pt" if name == "checkpoint" else ".pth"
        (out_dir / f"{name}{kind}").rename(out_dir / f"{name}.previous{kind}")
    checkpoint = torch.load(out_dir / "checkpoint.previous.pt", weights_only=True)
    checkpoint["run"] = {"id": "another", "finished": False}
    torch.save(checkpoint, out_dir / "checkpoint.pt")
    drawn_seven().save(tmp_path / "seven.png")
    lstm_mnist.main(predict_argv(out_dir, tmp_path / "seven.png"))
    out = capsys.readouterr().out
    assert (f"model: {out_dir / 'RNN.previous.pth'} (1 epoch, {out_dir / 'checkpoint.previous.pt'}, the last "
            f"finished run: {out_dir / 'checkpoint.pt'} holds an unfinished one)") in out
    (out_dir / "RNN.previous.pth").unlink()
    err = fails(capsys, predict_argv(out_dir, tmp_path / "seven.png"), 1)
    assert f"no finished model in {out_dir}" in err and "--resume" in err and "--eval-only" in err


def test_paths_that_are_no_image_each_say_why_and_the_others_are_still_read(model_copy, tmp_path, monkeypatch,
                                                                           capsys):
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    locked, private = tmp_path / "locked", tmp_path / "private.png"
    locked.mkdir()
    drawn_seven().save(private)
    iterdir, image_open = lstm_mnist.Path.iterdir, __import__("PIL.Image").Image.open

    def no_listing(self):  # what a folder without read permission gives (root reads any folder)
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    def no_reading(path, *args, **kwargs):
        if lstm_mnist.Path(path) == private:
            raise PermissionError(13, "Permission denied", str(path))
        return image_open(path, *args, **kwargs)

    monkeypatch.setattr(lstm_mnist.Path, "iterdir", no_listing)
    monkeypatch.setattr("PIL.Image.open", no_reading)
    with pytest.raises(SystemExit) as exit_info:
        lstm_mnist.main(predict_argv(model_copy, tmp_path / "loop-a", "/dev/null", locked, private,
                                     tmp_path / "seven.png"))
    captured = capsys.readouterr()
    assert exit_info.value.code == 1 and "seven.png: pred" in captured.out  # the good one is still read
    assert captured.err.splitlines() == [
        f"lstm_mnist.py: error: {tmp_path / 'loop-a'}: Too many levels of symbolic links",
        "lstm_mnist.py: error: /dev/null: not a file or a folder (a device or a pipe?)",
        f"lstm_mnist.py: error: {locked}: Permission denied",
        f"lstm_mnist.py: error: {private}: Permission denied"]


if __name__ == "__main__":  # python tests/test_predict.py FOLDER [N] --data-dir DIR (DIR holds MNIST/raw/)
    import argparse

    parser = argparse.ArgumentParser(description="Write N MNIST test digits disguised as a person's images.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("n", type=int, nargs="?", default=100)
    parser.add_argument("--data-dir", type=Path, required=True, help="the folder holding MNIST/raw/")
    options = parser.parse_args()
    write_folder(options.folder, options.n, options.data_dir)
