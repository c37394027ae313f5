"""``focusft-eval --help`` lists every flag of its own forms; each form's ``--help`` works wherever it is written."""

import pytest

from focusft.eval.cli import main

SUITE_FLAGS = ("--checkpoint_dir", "--backend", "--lengths", "--num_samples", "--limit", "--label", "--output_dir")
COMPARE_FLAGS = ("--compare REPORT", "--labels", "--reference")


def test_top_level_help_lists_the_flags_of_every_form(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in SUITE_FLAGS + COMPARE_FLAGS)
    assert "focusft-eval run --help" in text  # where lm-eval's own flags are listed


@pytest.mark.parametrize(
    "argv, flags",
    [
        (["--compare", "--help"], COMPARE_FLAGS),
        (["--compare", "-h"], COMPARE_FLAGS),
        (["--suite", "--help"], SUITE_FLAGS),
        (["--suite", "offline", "--help"], SUITE_FLAGS),
    ],
)
def test_each_forms_help(capsys, argv, flags):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    captured = capsys.readouterr()
    assert exit_.value.code == 0 and captured.err == ""
    assert all(flag in captured.out for flag in flags)
