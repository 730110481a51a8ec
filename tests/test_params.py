"""The text syntax of method lists, parameters and seed lists (pairlens.params)."""

from __future__ import annotations

import pytest

from pairlens.params import format_value, parse_int_list, parse_method_list, parse_value

KNOWN = {"a": {"k": 1, "window": None}, "b": {"k": 2, "guided": False}, "c": {}}


def test_values():
    assert parse_value("0.5") == 0.5 and parse_value("0,90") == (0, 90)
    assert parse_value("TRUE") is True and parse_value("none") is None
    assert parse_value("max") == "max" and parse_value("color-jitter") == "color-jitter"
    for v in (None, True, 0.15, (0.1, 0.3), "max", 64):
        assert parse_value(format_value(v)) == v or (v is None and format_value(v) == "auto")


def test_method_lists_and_scoped_parameters():
    assert parse_method_list("a,b", KNOWN) == [("a", {}), ("b", {})]
    assert parse_method_list("all", KNOWN) == [("a", {}), ("b", {}), ("c", {})]
    # unscoped: every selected method that has the key; scoped: that method; brackets win
    assert parse_method_list("a,b,c", KNOWN, ["k=5"]) == [("a", {"k": 5}), ("b", {"k": 5}),
                                                          ("c", {})]
    assert parse_method_list("a,b", KNOWN, ["b.k=7", "guided=true"]) == [
        ("a", {}), ("b", {"k": 7, "guided": True})]
    assert parse_method_list("b[k=3;guided=true],b", KNOWN, ["b.k=9"]) == [
        ("b", {"k": 3, "guided": True}), ("b", {"k": 9})]
    assert parse_method_list("a,a", KNOWN) == [("a", {})]  # duplicates dropped
    for text, assignments, message in (
        ("a", ["guided=true"], "no selected method has a parameter"),
        ("a", ["b.k=1"], "not among the selected"),
        ("a[nope=1]", [], "has no parameter nope"),
        ("zz", [], "unknown method"),
        ("a[k=1", [], "unbalanced"),
        ("", [], "no method selected"),
        ("a", ["k"], "KEY=VALUE"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_method_list(text, KNOWN, assignments)


def test_int_lists():
    assert parse_int_list("0,1,2") == [0, 1, 2] and parse_int_list("0-4") == [0, 1, 2, 3, 4]
    assert parse_int_list("3-3,7,3") == [3, 7] and parse_int_list(["1", "2"]) == [1, 2]
    assert parse_int_list("-1") == [-1]
    for bad in ("", "a", "3-1", "1.5"):
        with pytest.raises(ValueError):
            parse_int_list(bad)
