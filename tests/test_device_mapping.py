import pytest

from vroll.config.device_mapping import parse_device_mapping


@pytest.mark.parametrize("text, expected", [
    ("list(range(0,12))", list(range(12))),
    ("list(range(4))", [0, 1, 2, 3]),
    ("list( range( 2 , 10 , 4 ) )", [2, 6]),
    ([3, 1], [3, 1]),
    ("list(range(0, 4)) + [9]", [0, 1, 2, 3, 9]),  # ROLL's other forms, matched by pattern, never evaluated
    ("[0, 1]", [0, 1]),
])
def test_parses_lists_and_range_strings(text, expected):
    assert parse_device_mapping(text) == expected


@pytest.mark.parametrize("text", [
    "__import__('os').system('echo hacked')",
    "list(range(0, 4)) + __import__('os').getpid()",
    "range(0, 4)",
    "list(range(0, 4, 0))",
    ["0", 1],
    [True],
    3,
])
def test_rejects_anything_else_without_evaluating_it(text):
    with pytest.raises(ValueError) as e:
        parse_device_mapping(text)
    assert "list(range(" in str(e.value) or "integer" in str(e.value) or "zero" in str(e.value)
