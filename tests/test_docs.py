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


# --- One guide in two languages: the sections that mirror each other, heading by heading ------------------------
MIRRORED = [("這是什麼、會得到什麼", "What this is and what to expect"),
            ("四個指令", "Four commands"),
            ("出問題時", "When something fails"),
            ("跑完之後：最先印出的三行", "After the first run: the first three lines"),
            ("對照教學讀這個檔案", "Reading the file beside the tutorial"),
            ("圖怎麼看", "How to read the figures"),
            ("存下來的檔案", "The files a run keeps"),
            ("用自己的手寫數字試試看", "Try your own handwriting"),
            ("為什麼用 LSTM，不用簡單的 RNN？", "Why an LSTM, not a plain RNN?"),
            ("教學以外的訓練設定", "Beyond the tutorial's recipe")]
FIRST_RUN_END = "跑完之後：最先印出的三行"  # the Chinese read before a first run ends at this heading
FIGURES = ("predictions.png", "scores.png", "curves.png", "reading.png", "gates.png", "mistakes.png",
           "memory.png", "cells.png", "predict.png")
# A number: not glued to a Latin letter, digit, '_' or '.' before it (h_0, cu130, epoch30 and idx3 are names),
# with thousands separators dropped (214,282 = 214282). A Chinese character before it does not count: 第0列.
NUMBER = re.compile(r"(?<![A-Za-z0-9_.,])\d+(?:,\d{3})*(?:\.\d+)?")
FILE = re.compile(r"[A-Za-z0-9_*-]+(?:\.[A-Za-z0-9_*-]+)*\.(?:py|png|pth|pt|md|txt|jpg)\b")


def guide(name):
    """The level-2 part of README under the heading `name`, up to the next level-2 heading."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return readme.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]


def sections(text):
    """{level-3 heading: its text} of a guide."""
    parts = re.split(r"^### (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def tokens(text):
    numbers = {match.replace(",", "") for match in NUMBER.findall(text)}
    flags = set(FLAG.findall(text))
    files = set(FILE.findall(text))
    return numbers | flags | files


def test_both_guides_have_the_mirrored_sections_and_nothing_else():
    chinese, english = sections(guide("繁體中文導讀")), sections(guide("English guide"))
    assert list(chinese) == [zh for zh, _ in MIRRORED]
    assert list(english) == [en for _, en in MIRRORED]


def test_the_mirrored_sections_give_the_same_numbers_flags_and_files_in_both_languages():
    chinese, english = sections(guide("繁體中文導讀")), sections(guide("English guide"))
    drift = {}
    for zh, en in MIRRORED:
        only_zh, only_en = tokens(chinese[zh]) - tokens(english[en]), tokens(english[en]) - tokens(chinese[zh])
        if only_zh or only_en:
            drift[f"{zh} / {en}"] = {"only in Chinese": sorted(only_zh), "only in English": sorted(only_en)}
    assert drift == {}


def test_the_checker_sees_numbers_flags_and_files_but_not_names():
    assert tokens("第0列 h_0 cu130 epoch30 idx3 214,282 個參數，99.08%、--pad-rows 10 和 `outputs/cells.png`") \
        == {"0", "214282", "99.08", "--pad-rows", "10", "cells.png"}


def test_every_figure_is_explained_in_both_languages():
    chinese, english = sections(guide("繁體中文導讀")), sections(guide("English guide"))
    for figures in (chinese["圖怎麼看"], english["How to read the figures"]):
        explained = re.findall(r"^- \*\*`([\w.]+)`", figures, flags=re.M)
        assert sorted(explained) == sorted(FIGURES)
    assert "`model: 2 x 128 LSTM; 214,282 parameters`" in chinese[FIRST_RUN_END]


def test_readme_is_short_where_learners_read_it():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 700
    before_first_run = guide("繁體中文導讀").split(f"### {FIRST_RUN_END}", 1)[0]
    assert len(re.findall(r"[\u4e00-\u9fff]", before_first_run)) <= 3000  # about 10 minutes for this reader


# --- True for a learner: no development setup, no calques, advice that works -----------------------------------
DEVELOPMENT = re.compile(r"\bsessions?\b|\bdev(elopment)? machines?\b|installed here|\bissues? #?\d+|\bshared\b",
                         re.I)  # "earlier session" and "shared machines" included
EXAMPLE_DATA = "../shared/data"  # allowed once in README, as an example of --data-dir DIR


def test_the_guides_name_no_part_of_the_development_setup():
    for path in (REPO / "README.md", REPO / "tests" / "README.md"):
        text = path.read_text(encoding="utf-8")
        examples = [line for line in text.splitlines() if EXAMPLE_DATA in line]
        assert len(examples) <= (1 if path.parent == REPO else 0), examples
        assert all("--data-dir" in line for line in examples), examples
        found = [line for line in text.replace(EXAMPLE_DATA, "DIR").splitlines() if DEVELOPMENT.search(line)]
        assert found == [], path


CALQUES = ["配套程式", "教學這一組", "Windows 加 NVIDIA", "對照地圖", "選用參數", "細胞內部", "要給和原本一樣",
           "只讀張量", "配方", "續跑", "教學文", "抗鋸齒", "看不到裝置", "GIF（第一格）", "騙過模型", "大到不安全",
           "這個說法可以自己量", "量到的結果", "兩個執行同時跑", "短跑", "就這個量法而言", "它們沒有說明什麼",
           "不是同樣大小的比較", "閘門"]


def test_the_chinese_guide_has_no_calques_and_one_word_for_each_idea():
    text = guide("繁體中文導讀")
    assert [calque for calque in CALQUES if calque in text] == []
    assert re.findall(r"虛擬機(?!器)|只讀(?!取)", text) == []
    assert re.findall(r"(?<!A )(?<!A)單元", text) == []  # 單元 is the tutorial's A unit, nothing else
    assert text.count("種子") == 1 and "亂數種子（seed）" in text  # introduced once, then "seed"


def test_the_tutorials_load_line_comes_with_the_path_it_needs_here():
    chinese, english = sections(guide("繁體中文導讀")), sections(guide("English guide"))
    for text in (chinese["存下來的檔案"], english["The files a run keeps"]):
        item = next(part for part in text.split("\n- ") if "torch.load('./RNN.pth')" in part)
        assert "torch.load('./outputs/RNN.pth')" in item, item


def test_the_cell_comparison_is_given_as_safe_commands_in_both_languages():
    chinese, english = sections(guide("繁體中文導讀")), sections(guide("English guide"))
    for text in (chinese["為什麼用 LSTM，不用簡單的 RNN？"], english["Why an LSTM, not a plain RNN?"]):
        for command in ("python lstm_mnist.py --compare-cells --epochs 3 ",
                        "python lstm_mnist.py --compare-cells --epochs 3 --pad-rows 10 ",
                        "python lstm_mnist.py --compare-cells --epochs 3 --seeds 0 1 2 "):
            assert command in text, command
        assert "for seed in" not in text  # no shell loop: cmd and PowerShell have none
    assert "兩個致命缺點" in chinese["為什麼用 LSTM，不用簡單的 RNN？"] and "沒有列出" in chinese["為什麼用 LSTM，不用簡單的 RNN？"]
    assert "does not list them" in english["Why an LSTM, not a plain RNN?"]


def slug(heading):
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_within_the_guides_leads_somewhere():
    docs = {"README.md": REPO / "README.md", "tests/README.md": REPO / "tests" / "README.md"}
    anchors = {name: {slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.M)}
               for name, path in docs.items()}
    broken = []
    for name, path in docs.items():
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", path.read_text(encoding="utf-8")):
            if target.startswith("http"):
                continue
            resolved = (path.parent / target).resolve() if target else path
            if not resolved.exists():
                broken.append(f"{name}: {target}")
                continue
            key = next((doc for doc, doc_path in docs.items() if doc_path.resolve() == resolved), None)
            if anchor and key and anchor not in anchors[key]:
                broken.append(f"{name}: {target}#{anchor}")
    assert broken == []
