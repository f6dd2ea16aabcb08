"""README and --help must name the same flags, so the documentation cannot drift from the code."""

import re

from conftest import REPO, lstm_mnist

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def help_flags():
    return set(FLAG.findall(lstm_mnist.build_parser().format_help())) - {"--help"}


def readme_flags():
    """Flags README gives to lstm_mnist.py: in its options table and on its command lines."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    options = readme.split("## Options", 1)[1].split("\n## ", 1)[0]
    table = {flag for line in options.splitlines() if line.startswith("| `--") for flag in FLAG.findall(line)}
    commands = {flag for line in readme.splitlines() if "lstm_mnist.py" in line and "benchmark" not in line
                for flag in FLAG.findall(line)}
    return table, commands


def test_every_help_flag_is_in_the_readme_options_table():
    table, _ = readme_flags()
    assert help_flags() - table == set()


def test_readme_names_no_flag_that_help_lacks():
    table, commands = readme_flags()
    assert (table | commands) - help_flags() - {"--help"} == set()


def test_readme_defaults_match_the_defaults_block():
    table_text = (REPO / "README.md").read_text(encoding="utf-8").split("## Options", 1)[1]
    for key, flag in [("epochs", "--epochs"), ("batch_size", "--batch-size"), ("lr", "--lr"),
                      ("hidden_dim", "--hidden-dim"), ("n_layer", "--n-layer"), ("log_interval", "--log-interval")]:
        row = next(line for line in table_text.splitlines() if line.startswith(f"| `{flag}"))
        assert f"`{lstm_mnist.DEFAULTS[key]}`" in row, row


# The Traditional-Chinese guide that opens README (繁體中文導讀) must stay as honest as the English part.
BANNER = re.compile(r"^# (\d+)\. .*\((.+)\)$")
IDENTIFIER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def chinese_guide():
    """README from the guide's heading to the next level-2 heading."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return readme.split("## 繁體中文導讀", 1)[1].split("\n## ", 1)[0]


def chinese_map_rows():
    """The map's rows (教學標題 | 搜尋 | 函式、類別), as lists of cells, header and rule left out."""
    table = chinese_guide().split("### 對照教學讀這個檔案", 1)[1].split("\n###", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in table.splitlines() if line.startswith("|")]
    return rows[2:]


def test_chinese_map_names_the_banners_in_order_and_only_names_that_exist():
    source = (REPO / "lstm_mnist.py").read_text(encoding="utf-8")
    found = [(match.group(1), match.group(2)) for line in source.splitlines()
             for match in [BANNER.match(line)] if match]
    rows = chinese_map_rows()
    assert [row[0] for row in rows] == [heading for _, heading in found]
    missing = []
    for (number, heading), (_, search, names) in zip(found, rows):
        assert f"`# {number}.`" in search and f"({heading})" in search, search
        missing += [f"{heading}: {name}" for name in IDENTIFIER.findall(names) if not hasattr(lstm_mnist, name)]
    assert missing == [], "named in the map but not in lstm_mnist"


def test_chinese_guide_shows_only_flags_that_help_has():
    lines = [line for line in chinese_guide().splitlines() if "pip install" not in line]  # pip's own flags
    shown = {flag for line in lines for flag in FLAG.findall(line)}
    assert shown, "the guide shows no flag at all: did the parsing break?"
    assert shown - help_flags() == set()


LINE_KINDS = [("device", r"device: "), ("config", r"config: "), ("log", r"  epoch "), ("epoch", r"epoch "),
              ("saved", r"saved "), ("kept", r"kept the "), ("final", r"Final Test"),
              ("final loss", r"final test loss: "), ("example", r"test image 0: "),
              ("accuracy", r"final test accuracy: ")]


def line_kinds(lines):
    """The kind of each printed line, repeats collapsed: of one kind (a real epoch logs more batches) or of a
    sequence of up to three kinds (the log, epoch and saved lines of each epoch after the first)."""
    kinds = []
    for line in lines:
        kinds.append(next((name for name, start in LINE_KINDS if re.match(start, line)), "continued"))
        for n in (1, 2, 3):
            if kinds[-n:] == kinds[-2 * n : -n]:
                del kinds[-n:]
                break
    return kinds


def test_the_sample_output_has_the_lines_a_run_prints_in_their_order(drawn_run):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    sample = readme.split("## Sample output", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    assert "recorded before" not in readme
    assert line_kinds(sample.splitlines()) == line_kinds(drawn_run["printed"])


def test_the_chinese_guide_explains_what_a_reader_of_the_tutorial_meets_first():
    guide = chinese_guide()
    for needed in ("`config:", "`device:", "`model:", "列", "輸入閘", "遺忘閘", "輸出閘", "細胞狀態", "圖怎麼看",
                   "classifer", "********************", "epoch30", "98.8–99.1%"):
        assert needed in guide, needed
