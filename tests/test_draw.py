"""--draw: a digit written with the mouse, read by the model row by row.

Mouse and key events are synthesized through the figure's canvas, as matplotlib tests its
own widgets, on the Agg backend: no display needed. One test opens a real Tk window on an
Xvfb display and draws in it with xdotool, where both are installed.
"""

import math
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from matplotlib.backend_bases import KeyEvent, MouseEvent
from PIL import Image

from conftest import REPO, fails, lstm_mnist
from test_predict import LINE, centre_of_mass, ink_box, stroke_width


def line(start, end, n=12):
    """n points from start to end, as a mouse moved along it gives them (pad units, y down)."""
    return [(start[0] + (end[0] - start[0]) * k / (n - 1), start[1] + (end[1] - start[1]) * k / (n - 1))
            for k in range(n)]


# Each digit as a list of strokes, in the pad's units (0..1, y down), drawn at different sizes.
STROKES = {
    1: [line((0.52, 0.15), (0.46, 0.85))],  # a long bar, slightly slanted
    7: [line((0.35, 0.3), (0.6, 0.3), 8)[:-1] + line((0.6, 0.3), (0.45, 0.65), 10)],  # a small 7, in one stroke
    0: [[(0.5 + 0.2 * math.sin(a / 20 * 2 * math.pi), 0.5 - 0.3 * math.cos(a / 20 * 2 * math.pi))
         for a in range(21)]],  # an oval, closed
}


@pytest.fixture
def model_dir(real_model, tmp_path):
    """An --out-dir holding the briefly trained real model as RNN.pth alone (read with --hidden-dim 32)."""
    torch.save(real_model[0].state_dict(), tmp_path / "RNN.pth")
    return tmp_path


def open_pad(model, out_dir):
    """The pad on Agg, whose draw_idle draws at once: made to wait, as a window's does, for an explicit draw."""
    lstm_mnist.use_windows(False)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11, 5))
    fig.canvas.draw_idle = lambda *args, **kwargs: None
    return lstm_mnist.DrawPad(fig, model, out_dir)


def mouse(pad, name, point, button=1, ax=None):
    """A mouse event at `point` (in `ax`'s data units, the pad's by default), sent through the canvas."""
    x, y = (ax or pad.pad).transData.transform(point)
    MouseEvent(name, pad.fig.canvas, x, y, button=button)._process()


def key(pad, name):
    KeyEvent("key_press_event", pad.fig.canvas, name)._process()


def draw(pad, strokes, button=1):
    """Each stroke pressed, moved along and released, as a hand with a mouse does."""
    for stroke in strokes:
        mouse(pad, "button_press_event", stroke[0], button)
        for point in stroke[1:]:
            mouse(pad, "motion_notify_event", point, button)
        mouse(pad, "button_release_event", stroke[-1], button)


def close(pad):
    import matplotlib.pyplot as plt

    plt.close(pad.fig)


@pytest.mark.parametrize("digit", list(STROKES))
def test_strokes_drawn_with_the_mouse_are_read_as_the_digit_and_the_saved_png_reads_back_alike(
        digit, real_model, model_dir, capsys):
    pad = open_pad(real_model[0], model_dir)
    draw(pad, STROKES[digit])
    # The 28x28 made as --predict makes a photo: 20 pixels tall, centred by mass, MNIST's stroke width.
    image = pad.digit
    assert image.shape == (28, 28) and float(image.max()) == 1 and max(ink_box(image)) == 20
    assert all(abs(c - lstm_mnist.CENTRE) <= 0.5 for c in centre_of_mass(image))
    assert 1.5 <= stroke_width(image) <= 2.3, stroke_width(image)  # MNIST's middle half: 1.6 to 2.2
    # One line per finished stroke, the answer the model gives, and the reading row by row.
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(STROKES[digit]) and LINE.match(lines[-1]).groups()[:2] == ("drawing", str(digit)), lines
    assert pad.steps.shape == (28, 10) and torch.allclose(pad.steps.sum(dim=1), torch.ones(28))
    assert torch.allclose(pad.steps[-1], pad.probs, atol=1e-5)  # the last row's answer is the answer
    assert pad.answer.get_text() == f"{digit}  {100 * pad.probs.max():.1f}%"
    settled = lstm_mnist.settled_row(pad.steps, image)
    assert settled is not None and pad.settled[1].get_ydata()[0] == settled + 0.5
    assert pad.ax_digit.get_xlabel() == f"says {digit} from row {settled} on"
    # s saves a PNG that --predict reads to the same 28x28 and the same answer.
    key(pad, "s")
    saved = model_dir / "drawing-1.png"
    assert capsys.readouterr().out.startswith(f"saved {saved} (read it again: ")
    result = lstm_mnist.main(["--predict", str(saved), "--out-dir", str(model_dir), "--hidden-dim", "32",
                              "--device", "cpu"])
    back = result["predictions"][0]
    assert back["pred"] == digit and torch.allclose(back["digit"], image, atol=1e-6)
    assert LINE.match(capsys.readouterr().out.splitlines()[1]).group(2) == str(digit)
    key(pad, "s")
    assert (model_dir / "drawing-2.png").exists()  # the first one is kept
    close(pad)


def test_the_same_digit_drawn_small_or_large_or_anywhere_on_the_pad_is_the_same_28x28():
    small = STROKES[7]
    large = [[(0.05 + 3 * (x - 0.35), 0.02 + 3 * (y - 0.3)) for x, y in stroke] for stroke in small]
    digits = [lstm_mnist.strokes_to_mnist(strokes)[0] for strokes in (small, large)]
    assert torch.equal(digits[0], digits[1]) and float(digits[0].max()) == 1  # both drawn DRAW_SIDE pixels tall


def test_a_bidirectional_model_answers_but_shows_no_row_by_row_reading(tmp_path, capsys):
    # At row t its backward direction has read every row (probs_while_reading's docstring).
    pad = open_pad(lstm_mnist.RNN(28, 8, 1, 10, bidirectional=True).eval(), tmp_path)
    draw(pad, STROKES[7])
    assert LINE.match(capsys.readouterr().out.strip()) and pad.answer.get_text() != ""
    assert float(pad.steps.abs().sum()) == 0 and pad.ax_digit.get_xlabel() == ""
    assert pad.steps_image.axes.get_title() == "bidirectional: no reading"
    close(pad)


@pytest.mark.parametrize("size", ["32", "default"])
def test_an_update_takes_milliseconds(size, real_model, model_dir, capsys):
    """Measured, never asserted: a stroke's end, its answer drawn in the figure; printed in the test's log.

    "default" is the tutorial's RNN(28, 128, 2, 10), untrained: the time is the same as trained.
    """
    model = real_model[0] if size == "32" else lstm_mnist.RNN(28, 128, 2, 10).eval()
    pad = open_pad(model, model_dir)
    times = []
    for digit in (1, 7, 0, 1, 7, 0):
        key(pad, "c")
        stroke = STROKES[digit][0]
        mouse(pad, "button_press_event", stroke[0])
        for point in stroke[1:]:
            mouse(pad, "motion_notify_event", point)
        start = time.perf_counter()
        mouse(pad, "button_release_event", stroke[-1])  # the stroke's end: its update...
        middle = time.perf_counter()
        pad.fig.canvas.draw()  # ...and the window's next drawing
        times.append((1000 * (middle - start), 1000 * (time.perf_counter() - start)))
    with capsys.disabled():
        print(f"\n--draw update, hidden size {size}, on {torch.get_num_threads()} thread(s): "
              f"28x28 + model + reading {' '.join(f'{t:.0f}' for t, _ in times)} ms; "
              f"with the figure drawn by Agg {' '.join(f'{t:.0f}' for _, t in times)} ms")
    close(pad)


def test_while_drawing_the_answer_follows_at_most_every_live_every(real_model, model_dir, monkeypatch):
    clock = iter(range(10**6))
    monkeypatch.setattr(lstm_mnist.time, "monotonic", lambda: next(clock) * 0.03)  # a mouse event every 30 ms
    pad = open_pad(real_model[0], model_dir)
    updates = []
    update = pad.update
    monkeypatch.setattr(pad, "update", lambda: updates.append(1) or update())
    stroke = line((0.5, 0.1), (0.5, 0.9), 41)
    mouse(pad, "button_press_event", stroke[0])
    for point in stroke[1:]:
        mouse(pad, "motion_notify_event", point)
    assert 10 <= len(updates) <= 14  # 40 moves over 1.2 s: one update in 0.1 s, not one per move
    assert pad.answer.get_text() != ""  # the answer shows before the stroke ends
    mouse(pad, "button_release_event", stroke[-1])
    assert len(pad.strokes) == 1 and len(pad.strokes[0]) == 41
    close(pad)


def test_right_mouse_erases_a_stroke_and_clear_erases_all(real_model, model_dir, capsys):
    pad = open_pad(real_model[0], model_dir)
    draw(pad, [line((0.5, 0.1), (0.5, 0.9)), line((0.35, 0.9), (0.65, 0.9))])  # a 1, then its base
    mouse(pad, "button_press_event", (0.6, 0.88), button=3)  # right mouse: the stroke nearest goes
    assert len(pad.strokes) == 1 and pad.strokes[0][0] == pytest.approx((0.5, 0.1)) and len(pad.pad.lines) == 1
    button = pad.button.ax  # the Clear button, clicked
    mouse(pad, "button_press_event", (0.5, 0.5), ax=button)
    mouse(pad, "button_release_event", (0.5, 0.5), ax=button)
    assert pad.strokes == [] and len(pad.pad.lines) == 0 and float(pad.digit.abs().sum()) == 0
    assert pad.answer.get_text() == "" and float(pad.digit_image.get_array().max()) == 0
    assert pad.ax_digit.get_xlabel() == "" and math.isnan(pad.settled[0].get_ydata()[0])
    draw(pad, [line((0.5, 0.1), (0.5, 0.9))])
    key(pad, "c")
    assert pad.strokes == [] and pad.answer.get_text() == ""
    key(pad, "s")  # nothing to save
    assert not list(model_dir.glob("drawing-*.png"))
    close(pad)


@pytest.mark.figures
def test_the_window_as_a_screenshot(real_model, model_dir):
    pad = open_pad(real_model[0], model_dir)
    draw(pad, STROKES[7])
    path = model_dir / "draw.png"
    pad.fig.savefig(path)
    close(pad)
    with Image.open(path) as shot:
        assert shot.size == (1100, 500)
    assert path.stat().st_size > 20_000


# --- Where there is no window -----------------------------------------------------------


def test_without_a_window_it_ends_in_one_line_that_points_to_predict(tmp_path, capsys):
    lstm_mnist.use_windows(False)  # Agg, as on a server without a display
    start = time.perf_counter()
    err = fails(capsys, ["--draw", "--out-dir", tmp_path], 2)
    with capsys.disabled():
        print(f"\n--draw without a window: ended in {1000 * (time.perf_counter() - start):.0f} ms")
    assert err.startswith("lstm_mnist.py: error: argument --draw: needs a window for the mouse, but matplotlib's "
                          "backend here is agg (no display, or a notebook's inline plots)")
    assert "pip install ipympl, then %matplotlib widget" in err and "run --predict PHOTO" in err


@pytest.mark.parametrize("flags", [["--predict", "seven.png"], ["--compare-cells"], ["--epochs", "3"],
                                   ["--recipe", "fast"], ["--resume"]])
def test_draw_is_refused_with_training_or_other_side_trips(flags, capsys):
    err = fails(capsys, ["--draw", *flags], 2)
    side_trip = flags[0] in ("--predict", "--compare-cells")  # one of these at a time
    assert "--draw" in err and f"not allowed with {flags[0] if not side_trip else ''}" in err
    assert ("pick one" if side_trip else "(--draw trains nothing: it reads the model in --out-dir)") in err


def test_draw_leaves_the_other_runs_settings_alone(monkeypatch):
    assert "draw" not in vars(lstm_mnist.parse_args([]))  # so the config line of a run is unchanged
    monkeypatch.setattr(lstm_mnist, "WINDOW_BACKENDS", ("agg",))  # as if Agg opened windows
    assert "draw" in vars(lstm_mnist.parse_args(["--draw", "--hidden-dim", "32"]))  # model flags pass


# --- A real window: Tk on an Xvfb display, a stroke drawn with xdotool --------------------
WAIT_S = 60  # the window closes itself after this long, should xdotool never press q


def needs_xvfb():
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install xvfb xdotool)")
    try:
        import tkinter  # noqa: F401
    except ImportError:
        pytest.skip("needs tkinter, for matplotlib's TkAgg window")


def xdotool(display, *words):
    return subprocess.run(["xdotool", *map(str, words)], capture_output=True, text=True, timeout=20,
                          env={**os.environ, "DISPLAY": display}).stdout.split()


def test_a_stroke_in_a_real_tk_window_prints_its_answer(real_model, model_dir):
    needs_xvfb()
    # -displayfd: Xvfb picks a free display and writes its number once it accepts clients.
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    display = ":" + xvfb.stdout.readline().strip()
    # The window closes itself after WAIT_S seconds, whatever happens to the mouse.
    child = ("import sys, matplotlib.pyplot as plt, lstm_mnist\n"
             "show = plt.show\n"
             "def timed_show():\n"
             f"    timer = plt.gcf().canvas.new_timer(interval={WAIT_S * 1000})\n"
             "    timer.add_callback(plt.close, 'all')\n"
             "    timer.start()\n"
             "    show()\n"
             "plt.show = timed_show\n"
             "lstm_mnist.main(sys.argv[1:])\n")
    env = {**os.environ, "DISPLAY": display, "MPLBACKEND": "TkAgg", "PYTHONPATH": str(REPO)}
    draw_run = subprocess.Popen([sys.executable, "-c", child, "--draw", "--out-dir", str(model_dir),
                                 "--hidden-dim", "32"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        window = xdotool(display, "search", "--sync", "--onlyvisible", "--name", "lstm_mnist.py --draw")[0]
        time.sleep(0.5)  # the first drawing of the figure
        width, height = (int(n) for n in xdotool(display, "getwindowgeometry", "--shell", window)[3:5]
                         for n in [n.split("=")[1]])
        # The pad is the figure's left third; a vertical bar down its middle, then q.
        x = round(0.2 * width)
        xdotool(display, "mousemove", "--window", window, x, round(0.25 * height), "mousedown", "1")
        for k in range(1, 11):
            xdotool(display, "mousemove", "--window", window, x, round((0.25 + 0.05 * k) * height))
        xdotool(display, "mouseup", "1")
        time.sleep(0.5)
        xdotool(display, "key", "--window", window, "q")
        out, _ = draw_run.communicate(timeout=WAIT_S + 10)
    finally:  # whatever failed, no window and no display are left behind
        draw_run.kill()
        xvfb.terminate()
        xvfb.wait()
    answers = [LINE.match(line) for line in out.splitlines() if line.startswith("drawing:")]
    assert len(answers) == 1 and answers[0].group(2) == "1", out
    assert draw_run.returncode == 0
