"""The file reads beside the tutorial: its headings in order, the plumbing after its sections."""

import re

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


def test_the_part_a_learner_may_skip_comes_after_main():
    assert SOURCE.index("def main(") < SOURCE.index("The part a learner may skip") < SOURCE.index("def build_parser(")


def test_the_default_model_is_the_tutorials_rnn_28_128_2_10():
    hparams = {key: lstm_mnist.DEFAULTS[key] for key in lstm_mnist.MODEL_FLAGS}
    model = lstm_mnist.build_model(hparams)
    tutorial = lstm_mnist.RNN(28, 128, 2, 10)
    assert str(model) == str(tutorial)
    assert (model.lstm.input_size, model.lstm.hidden_size, model.lstm.num_layers, model.classifier.out_features) \
        == (28, 128, 2, 10)
    assert model.lstm.batch_first


def test_help_names_nn_lstm_batch_first_and_the_old_flag_still_works():
    assert "--no-batch-first" in lstm_mnist.build_parser().format_help()
    assert lstm_mnist.parse_args(["--no-batch-first"]).batch_first is False
    assert lstm_mnist.parse_args(["--time-major"]).batch_first is False
    assert lstm_mnist.parse_args([]).batch_first is True
