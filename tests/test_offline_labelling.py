"""Answer extraction and checking on hand-made cases; the label function is pluggable."""

from __future__ import annotations

import pytest

from autocritic.offline.labelling import (
    answer_of,
    extract_answer,
    is_correct,
    label_final_number,
    label_offline,
    make_label_fn,
)
from autocritic.offline.tasks import Problem


@pytest.mark.parametrize(
    ("text", "number"),
    [
        (" 68", "68"),
        (" -5", "-5"),
        (" 1,234", "1234"),
        (" 3.25 apples", "3.25"),
        ("so the answer is 7.", "7"),
        ("Thought: I now know the final answer.\nFinal Answer: 103.5", "103.5"),
        ("3 + 4 = 7\n#### 7", "7"),
        (" banana", None),
        ("", None),
    ],
)
def test_extract_answer(text, number):
    assert extract_answer(text) == number


def test_is_correct():
    assert is_correct("68", "68") and is_correct("68.0", "68") and is_correct("0.30000000000000004", "0.3")
    assert not is_correct("67", "68") and not is_correct("6.8", "68") and not is_correct(None, "68")
    assert is_correct("Ada", "ada") and not is_correct("Ada", "Alan")


def test_default_label_fn_right_wrong_unparsable():
    problem = Problem("arithmetic", "What is 23+45?", "68", 2, "add_2d", "23+45")
    assert label_final_number(problem, " 68") is True
    assert label_final_number(problem, " 69") is False
    assert label_final_number(problem, " sixty-eight") is False


def test_user_supplied_extractor_gsm8k_style():
    label = make_label_fn(lambda text: text.split("####")[-1].strip() if "####" in text else None)
    problem = Problem("gsm8k", "Tom has 40 apples and buys 2. How many?", "42", 0, "gsm8k")
    assert label(problem, "40 + 2 = 42\n#### 42") is True
    assert label(problem, "40 + 2 = 42\n#### 41") is False
    assert label(problem, "I think 42") is False


def test_offline_label_reads_arithmetic_by_number():
    problem = Problem("arithmetic", "What is 23+45?", "68", 2, "add_2d", "23+45")
    assert label_offline(problem, " 68.0") is True and label_offline(problem, " 69") is False
    assert answer_of(problem, " 68") == "68"
