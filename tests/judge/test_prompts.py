import pytest

from saga.judge.prompts import (format_comparison, pair_messages, pair_prompt, parse_comparison, parse_verdict,
                                verdict_reward)


@pytest.mark.parametrize("text, expected", [
    ("body: red / red\nAnswer: same", True),
    ("answer: DIFFERENT.", False),
    ("**Answer:** Same!", True),
    ("They look alike.\nANSWER - different, because the crest differs", False),
    ("Answer: same\nWait, let me check again.\nAnswer: different", False),  # the last verdict wins
    ("Answer: yes", True),
    ("Answer: no", False),
    ("The two birds are not the same species.", False),
    ("These are the same species", True),
    ("Both are different species", False),
    ("", None),
    ("the crest is tall", None),
    ("same crest but different bill", None),  # ambiguous line, no marker
    ("<|image_pad|><|im_end|>", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) is expected


def test_reward_counts_unparseable_as_wrong():
    assert verdict_reward(True, True) == 1.0
    assert verdict_reward(False, True) == 0.0
    assert verdict_reward(None, True) == 0.0 and verdict_reward(None, False) == 0.0


def test_comparison_round_trip():
    a = {"body": "red", "crest": "tall"}
    b = {"body": "red", "crest": "none"}
    text = format_comparison(a, b, same=False)
    assert text == "body: red / red match\ncrest: tall / none mismatch\nAnswer: different"
    assert parse_comparison(text) == {"body": ("red", "red"), "crest": ("tall", "none")}
    assert parse_verdict(text) is False
    assert parse_comparison("Body: Red / RED.\ngarbage line\n") == {"body": ("red", "red")}
    assert parse_comparison("crest: tall / none (maybe)\nbill: long / short mismatch") == {"bill": ("long", "short")}


def test_line_marks_never_read_as_a_verdict():
    text = format_comparison({"crest": "tall"}, {"crest": "none"}, same=False)
    assert parse_verdict(text.rsplit("\n", 1)[0]) is None  # cut before the Answer line: no verdict
    assert parse_verdict(format_comparison({"crest": "tall"}, {"crest": "tall"}, same=True)) is True


def test_prompt_names_the_subject():
    assert "car" in pair_prompt("cars") and "bird" in pair_prompt("cub")
    content = pair_messages("synth")[0]["content"]
    assert [c["type"] for c in content].count("image") == 2


def test_attribute_reward_is_the_share_of_values_stated_correctly():
    from saga.judge.prompts import attribute_reward

    truth_a = {"crest": "tall", "bill_shape": "long", "tail_shape": "fan"}
    truth_b = {"crest": "tall", "bill_shape": "long", "tail_shape": "forked"}
    text = "Crest: tall / tall match\nbill_shape: long / short mismatch\nAnswer: different"
    assert attribute_reward(text, truth_a, truth_b) == 3 / 6  # crest 2, bill 1, tail line missing 0
    assert attribute_reward("no comparison at all", truth_a, truth_b) == 0.0
