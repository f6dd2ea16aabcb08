"""The file reads beside the tutorial: its headings in order, the plumbing after its sections."""

import ast
import io
import re
import tokenize
import unicodedata

from conftest import REPO, lstm_mnist

SOURCE = (REPO / "lstm_mnist.py").read_text(encoding="utf-8")
# The tutorial's code headings, verbatim and in its order (MINST is its spelling).
HEADINGS = ["參照庫檔案", "超參設定", "MINST數據集匯入", "定義LSTM結構", "定義損失函數和優化器",
            "訓練和測試過程", "儲存模型", "最終效能測試", "提取一個範例進行直觀認識"]
BANNER = re.compile(r"^# (\d+)\. .*\((.+)\)$")


def banners():
    return [(number, line_no, match.group(2)) for line_no, line in enumerate(SOURCE.splitlines())
            for match in [BANNER.match(line)] if match for number in [int(match.group(1))]]


def test_the_tutorials_headings_are_numbered_banners_in_its_order():
    found = banners()
    assert [heading for _, _, heading in found] == HEADINGS
    assert [number for number, _, _ in found] == list(range(len(HEADINGS)))


def tutorial_sections():
    """The lines from the first banner to the banner that ends the tutorial's last section."""
    lines = SOURCE.splitlines()
    first, last = banners()[0][1], banners()[-1][1]
    end = next(i for i in range(last + 2, len(lines)) if lines[i].startswith("# ---") or lines[i].startswith("# ==="))
    return lines[first:end]


def test_no_plumbing_inside_the_tutorials_sections():
    plumbing = re.compile(r"ctypes|mallopt|mkstemp|fsync|os\.replace|\bre\.\w+\(|argparse|shlex|\bsignal\b")
    offending = [line for line in tutorial_sections()
                 if plumbing.search(line) and not line.startswith(("import ", "from "))]
    assert offending == []


PARTS = ["# Part 1. Inside the LSTM", "# Part 2. Why an LSTM", "# Part 3. Your own handwriting",
         "# Part 4. Beyond the tutorial's recipe", "# Part 5. Plumbing a learner may skip"]
# What each part holds: a name defined in it, for each kind of thing it holds.
ROOMS = [
    ("show_shapes", "lstm_cell", "lstm_by_hand", "plot_reading", "plot_gates", "plot_mistakes"),
    ("class CellModel", "def plot_memory(", "def compare_cells(", "CELLS = "),
    ("def predict_images(", "def to_mnist(", "def plot_predict("),
    ("class Levers", "def random_warp(", "def make_ema(", "def hold_out(", "def amp_context(", "RECIPES = "),
    ("class RunState", "def restore(", "def atomic_file(", "def load_checkpoint(", "def parse_args(",
     "def make_loader(", "def side_trip("),
]


def test_five_marked_parts_follow_main_in_order_each_saying_who_reads_it():
    places = [SOURCE.index(part) for part in PARTS] + [len(SOURCE)]
    assert SOURCE.index("def main(") < places[0] and places == sorted(places)
    for k, names in enumerate(ROOMS):
        for name in names:
            name = name if name.startswith(("class ", "def ")) or name.endswith("= ") else f"def {name}("
            assert places[k] < SOURCE.index(name) < places[k + 1], (PARTS[k], name)
    for part in PARTS:  # the banner's next lines say who should read the part
        after = SOURCE[SOURCE.index(part):].splitlines()[1]
        assert after.startswith("# For "), after


def learners_path():
    """The top-level statements from the first banner to the end of main(), and the number of lines."""
    lines = SOURCE.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#") and "參照庫檔案" in line)
    tree = ast.parse(SOURCE)
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    nodes = [node for node in tree.body if first < node.lineno <= main.end_lineno
             and not isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr))]
    return nodes, main.end_lineno - first


def test_the_learners_path_is_one_sitting():
    nodes, n_lines = learners_path()
    assert n_lines <= 370
    assert len(nodes) <= 20  # functions, classes and constants
    for node in ast.walk(ast.Module(body=nodes, type_ignores=[])):
        if isinstance(node, ast.FunctionDef):
            names = [arg.arg for arg in node.args.args + node.args.kwonlyargs if arg.arg != "self"]
            assert len(names) <= 7, (node.name, names)


def test_the_training_step_is_written_as_the_tutorial_writes_it():
    source = ast.get_source_segment(SOURCE, next(node for node in learners_path()[0]
                                                 if getattr(node, "name", "") == "train_one_epoch"))
    lines = [line.strip().split("  #")[0] for line in source.splitlines()]
    for line in ("optimizer.zero_grad()", "loss.backward()", "optimizer.step()"):
        assert line in lines, line


def test_section_6_saves_the_bare_state_dict_as_the_tutorial_does():
    source = ast.get_source_segment(SOURCE, next(node for node in learners_path()[0]
                                                 if getattr(node, "name", "") == "save_model"))
    assert "model.state_dict()" in source and "torch.save(weights, f)" in source and '"RNN.pth"' in source
    assert ".cpu()" in source  # CPU tensors: the tutorial's torch.load line reads them on any machine


def test_the_old_spelling_of_batch_first_is_gone():
    assert "time_major" not in SOURCE and "time-major" not in SOURCE


def test_the_default_model_is_the_tutorials_rnn_28_128_2_10():
    hparams = lstm_mnist.model_hparams(lstm_mnist.parse_args([]))
    model = lstm_mnist.build_model(hparams)
    tutorial = lstm_mnist.RNN(28, 128, 2, 10)
    assert str(model) == str(tutorial)
    assert (model.lstm.input_size, model.lstm.hidden_size, model.lstm.num_layers, model.classifer.out_features) \
        == (28, 128, 2, 10)
    assert model.lstm.batch_first


def test_help_names_nn_lstm_batch_first():
    assert "--no-batch-first" in lstm_mnist.build_parser().format_help()
    assert lstm_mnist.parse_args(["--no-batch-first"]).batch_first is False
    assert lstm_mnist.parse_args([]).batch_first is True


def path_text():
    """The learner's path as lines, and its comments and docstrings."""
    lines = SOURCE.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#") and "參照庫檔案" in line)
    last = learners_path()[1] + first
    texts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(SOURCE).readline)
             if tok.type == tokenize.COMMENT and first < tok.start[0] <= last]
    for node in ast.walk(ast.parse(SOURCE)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and first < node.lineno <= last:
            texts.append(ast.get_docstring(node, clean=False) or "")
    return lines[first:last], texts


def columns(line):
    """Columns a line takes in an editor: a Chinese (wide) character counts as two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in line)


def test_the_path_reads_in_one_sitting_for_a_reader_of_chinese():
    lines, texts = path_text()
    chinese = [line for line in lines if re.search(r"[\u4e00-\u9fff]", line)]
    assert len(chinese) >= 45  # the glosses a reader of Traditional Chinese needs
    english_words = sum(len(re.findall(r"[A-Za-z][A-Za-z']*", text)) for text in texts)
    assert english_words <= 900, english_words
    wide = [line for line in lines if columns(line) > 100]
    assert wide == [], wide


def test_the_gate_equations_carry_their_chinese_names():
    doc = lstm_mnist.lstm_cell.__doc__
    for name in ("輸入閘", "遺忘閘", "輸出閘", "候選值", "細胞狀態", "隱藏狀態"):
        assert name in doc, name


def test_section_8_draws_the_tutorials_one_example_on_the_path():
    names = [getattr(node, "name", "") for node in learners_path()[0]]
    assert "plot_scores" in names and "draw_figures" in names


def test_no_blank_lines_are_left_behind():
    assert "\n\n\n\n" not in SOURCE  # at most the two blank lines between top-level definitions
    assert SOURCE.endswith("\n") and not SOURCE.endswith("\n\n")
