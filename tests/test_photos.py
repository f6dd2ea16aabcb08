"""--predict on photographed pages (shadows, ruled paper, a table) and on the files phones and apps make.

The pages are small (a few hundred pixels) and drawn here: a digit made on a 28x28 grid, put on a
page by photo_pages.py as each kind of page would have it, must come back as from the clean page.
"""

import warnings

import pytest
import torch
from matplotlib import ft2font
from PIL import Image, ImageDraw, features

import photo_pages
from conftest import fails, lstm_mnist
from test_predict import (LINE, as_image, drawn_seven, predict_argv, shifted_similarity, stroke_width,  # noqa: F401
                          tiny_model)


def grid_digit(shape):
    """A 28x28 digit drawn with a 3-pixel pen: "0" a ring, "7" a bar and a stem, in [0, 1]."""
    image = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(image)
    if shape == "0":
        draw.ellipse([8, 4, 20, 24], outline=255, width=3)
    else:
        draw.line([(7, 5), (21, 5), (13, 24)], fill=255, width=3)
    return lstm_mnist.pixels(image) / 255


def read(image):
    return lstm_mnist.to_mnist(image)


@pytest.mark.parametrize("kind", ["shadow60", "shadow-sharp", "fall20", "vignette", "ruled", "ruled-margin",
                                  "ruled-pale", "grid", "table", "edge"])
@pytest.mark.parametrize("shape", ["0", "7"])
def test_a_photographed_page_reads_as_the_clean_page(kind, shape):
    digit = grid_digit(shape)
    clean = read(photo_pages.page_of(digit, "clean", seed=1))
    other = read(photo_pages.page_of(digit, kind, seed=1))  # the same digit at the same place
    # As close as two MNIST-made images of one digit a pixel apart (test_predict.py's disguised digits).
    # A 0 whose crop is 12 or 13 pixels wide once fitted into 20x20 gives 0.92: anything worse is not alike.
    assert float(shifted_similarity(other[None], clean[None])) > 0.9


def test_the_paper_light_follows_a_shadow_and_closes_over_strokes():
    ramp = torch.linspace(240, 100, 320)[None].expand(300, 320).clone()  # 58% darker to the right
    levels = ramp.clone()
    levels[50:250, 150:170] *= 0.2  # a stroke 20 pixels wide
    light = lstm_mnist.paper_light(levels)
    # Within 8% everywhere, the stroke and the darker edge included (a block's max is up to a block's ramp ahead).
    assert ((light - ramp).abs() / ramp).max() < 0.08


def test_a_dark_band_at_a_side_is_table_but_in_the_middle_it_is_the_digit():
    ink = torch.zeros(300, 200)
    ink[:40] = 200  # a table along the top
    ink[150:180, 10:190] = 200  # a digit's thick bar across the middle
    ink[100:102] = 120  # a thin rule
    lines = lstm_mnist.lines(ink, floor=20)
    fringe = lstm_mnist.RULE_FRINGE  # rows each side of a band, taken with it
    assert lines[: 40 + fringe].all() and lines[100 - fringe : 102 + fringe].all() and not lines[150:180].any()
    assert not lines[40 + fringe : 100 - fringe].any() and not lines[102 + fringe :].any()


def test_a_rule_is_made_paper_and_a_stroke_across_it_is_bridged():
    ink = torch.zeros(100, 100)
    ink[50:52] = 150  # a rule
    ink[20:80, 40:46] = 220  # a stroke crossing it
    bridged = lstm_mnist.bridged(ink, floor=20)
    assert (bridged[50:52, 40:46] == 220).all()  # the stroke keeps its ink where the rule crossed
    assert bridged[45:57, :40].abs().max() == 0 and bridged[45:57, 46:].abs().max() == 0


def test_a_digit_touching_the_sides_is_not_taken_for_a_table():
    page = torch.full((300, 300), 235.0)
    page[:, 140:160] = 30  # a 1 from the top edge to the bottom edge
    page[100:110, 120:140] = 30  # with its flag
    one = read(as_image(page))
    assert one is not None and int((one > 0.5).any(dim=0).sum()) < 10  # narrow: a 1, not cropped away


def test_a_markers_strokes_are_thinned_and_a_zero_keeps_its_hole():
    thick = Image.new("L", (300, 300), 235)
    ImageDraw.Draw(thick).ellipse([80, 40, 220, 260], outline=20, width=45)  # strokes a fifth of the height
    zero = read(thick)
    assert stroke_width(zero) <= lstm_mnist.THICK_STROKE + 0.5
    assert zero[12:16, 12:16].max() < 0.2  # the loop stays open
    assert stroke_width(read(drawn_seven(width=30))) <= lstm_mnist.THICK_STROKE + 0.5  # a 7 too


def two_sevens():
    page = Image.new("L", (600, 300), 235)
    draw = ImageDraw.Draw(page)
    for left in (60, 360):
        draw.line([(left, 60), (left + 180, 60), (left + 80, 250)], fill=20, width=12)
    return page


def test_warnings_for_two_digits_a_speck_and_ink_everywhere():
    notes = []
    assert lstm_mnist.to_mnist(two_sevens(), notes) is not None
    assert len(notes) == 1 and notes[0].startswith("2 pieces of ink far apart")
    speck = drawn_seven()
    ImageDraw.Draw(speck).ellipse([540, 540, 548, 548], fill=20)
    notes = []
    lstm_mnist.to_mnist(speck, notes)
    assert notes == ["a speck of ink apart from the digit widens the crop: crop it out"]
    blot = Image.new("L", (300, 300), 235)
    ImageDraw.Draw(blot).ellipse([0, 0, 299, 299], outline=20, width=50)  # a 0 in a marker, cropped tight
    notes = []
    lstm_mnist.to_mnist(blot, notes)
    assert notes and notes[0].startswith("ink covers most of the image")
    notes = []
    lstm_mnist.to_mnist(drawn_seven(), notes)
    assert notes == []


# --- The files: bit depths, modes, sizes and names ------------------------------------


def test_16_bit_and_float_images_read_as_their_8_bit_versions(tmp_path):
    eight = drawn_seven().reduce(2)
    levels = lstm_mnist.pixels(eight)
    Image.fromarray((levels * 257).to(torch.int32).numpy().astype("uint16")).save(tmp_path / "sixteen.png")
    Image.fromarray((levels / 255).numpy()).save(tmp_path / "float.tif")
    Image.fromarray(levels.numpy()).save(tmp_path / "float-levels.tif")  # floats 0..255
    eight.save(tmp_path / "eight.png")
    same = lstm_mnist.to_mnist(lstm_mnist.open_image(tmp_path / "eight.png"))
    for name in ("sixteen.png", "float.tif", "float-levels.tif"):
        image = lstm_mnist.open_image(tmp_path / name)
        assert image.mode == "L", name
        assert (lstm_mnist.to_mnist(image) - same).abs().max() < 0.02, name


def test_a_100_megapixel_jpeg_is_read_small_and_only_a_small_copy_is_kept(tiny_model, tmp_path, capsys):  # noqa: F811
    photo = Image.new("L", (12000, 8400), 235)
    ImageDraw.Draw(photo).line([(4000, 2000), (8000, 2000), (6000, 7000)], fill=20, width=250)
    photo.save(tmp_path / "phone.jpg", quality=5)  # about a megabyte on disk
    del photo
    image = lstm_mnist.open_image(tmp_path / "phone.jpg")
    assert max(image.size) <= lstm_mnist.WORK_SIDE and image.info["given_size"] == (12000, 8400)
    result = lstm_mnist.main(predict_argv(tiny_model, tmp_path / "phone.jpg"))
    assert max(result["predictions"][0]["given"].size) <= lstm_mnist.SHOWN_SIDE
    assert LINE.match(capsys.readouterr().out.splitlines()[1])


def test_heic_lab_and_hidden_files_each_get_one_line_and_the_rest_are_read(tiny_model, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "phone"
    folder.mkdir()
    drawn_seven().reduce(2).save(folder / "seven.png")
    (folder / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    drawn_seven().reduce(2).convert("RGB").convert("LAB").save(folder / "lab.tif")
    (folder / "._seven.png").write_bytes(b"\0\5\26\7 a Mac's resource fork")
    (folder / ".hidden.png").write_bytes(b"not read")
    with pytest.raises(SystemExit) as exit_info:
        lstm_mnist.main(predict_argv(tiny_model, folder))
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert [LINE.match(line).group(1) for line in out.splitlines()[1:2]] == [str(folder / "seven.png")]
    lines = err.splitlines()  # one for each file that could not be read, the hidden ones not tried
    assert len(lines) == 2
    assert lines[0].startswith(f"lstm_mnist.py: error: {folder / 'IMG_0001.HEIC'}: Pillow cannot read HEIC; "
                               "save it as JPEG")
    assert lines[1].startswith(f"lstm_mnist.py: error: {folder / 'lab.tif'}: not an image Pillow can read")
    assert "LAB" in lines[1]


def test_two_digits_side_by_side_and_a_speck_print_a_warning_on_their_lines(tiny_model, tmp_path, capsys):  # noqa: F811
    two_sevens().save(tmp_path / "77.png")
    speck = drawn_seven()
    ImageDraw.Draw(speck).ellipse([540, 540, 548, 548], fill=20)
    speck.save(tmp_path / "7-speck.png")
    drawn_seven().save(tmp_path / "7.png")
    lstm_mnist.main(predict_argv(tiny_model, tmp_path / "77.png", tmp_path / "7-speck.png", tmp_path / "7.png"))
    lines = capsys.readouterr().out.splitlines()[1:4]
    answers = [line.split("; warning: ") for line in lines]
    assert [LINE.match(answer[0]).group(1) for answer in answers] == [str(tmp_path / name)
                                                                      for name in ("77.png", "7-speck.png", "7.png")]
    assert answers[0][1].startswith("2 pieces of ink far apart (several digits?): crop to one")
    assert answers[1][1].startswith("a speck of ink apart from the digit widens the crop")
    assert len(answers[2]) == 1  # one digit alone: no warning


def test_a_stale_predict_png_is_removed_when_nothing_was_read(tiny_model, tmp_path, capsys):  # noqa: F811
    (tiny_model / "predict.png").write_bytes(b"an earlier run's figure")
    Image.new("L", (200, 200), 250).save(tmp_path / "blank.png")
    fails(capsys, predict_argv(tiny_model, tmp_path / "blank.png"), 1)
    assert not (tiny_model / "predict.png").exists()


def test_a_chinese_file_name_prints_and_draws_without_glyph_warnings(tiny_model, tmp_path, capsys):  # noqa: F811
    drawn_seven().reduce(2).save(tmp_path / "我的七.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = lstm_mnist.main(predict_argv(tiny_model, tmp_path / "我的七.png"))
    assert not [w for w in caught if "missing from" in str(w.message)], [str(w.message) for w in caught]
    assert LINE.match(capsys.readouterr().out.splitlines()[1]).group(1) == str(tmp_path / "我的七.png")
    assert result["figure"].stat().st_size > 10_000


def test_a_file_name_is_drawn_in_a_font_that_has_its_glyphs_or_escaped():
    assert lstm_mnist.font_for("seven-7.png") is not None
    font = lstm_mnist.font_for("我的七.png")  # None where no installed font has them: then written \\u6211...
    if font is not None:
        glyphs = ft2font.FT2Font(font.get_file())
        assert all(glyphs.get_char_index(ord(char)) for char in "我的七")


@pytest.mark.skipif(not features.check("webp"), reason="this Pillow was built without WebP")
def test_a_webp_drawing_is_read(tmp_path):
    drawn_seven().reduce(2).save(tmp_path / "seven.webp", quality=90)
    assert lstm_mnist.to_mnist(lstm_mnist.open_image(tmp_path / "seven.webp")) is not None


def test_the_rules_of_a_page_photographed_askew_are_made_level_first():
    rows, cols = torch.arange(300.0)[:, None], torch.arange(300.0)[None]
    askew = ((rows - 0.035 * cols) % 32 < 2).float() * 150  # rules tilted 2 degrees, every 32 rows
    assert not lstm_mnist.lines(askew, floor=20).any()  # no row is inked end to end...
    level = lstm_mnist.straightened(askew, floor=20)
    assert lstm_mnist.lines(level, floor=20).sum() >= 8 * 2  # ...until they are turned level
    digit = torch.zeros(300, 300)
    digit[50:250, 140:160] = 200  # a 1, and no rules: left as it is
    assert torch.equal(lstm_mnist.straightened(digit, floor=20), digit)
