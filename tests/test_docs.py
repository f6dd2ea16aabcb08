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
