"""The text syntax of method lists, parameters and seed lists (pairlens.params)."""

from __future__ import annotations

import pytest

from pairlens.params import format_value, parse_int_list, parse_method_list

KNOWN = {"a": {"k": 1, "window": None}, "b": {"k": 2, "guided": False}, "c": {}}


def test_values_are_shown_as_typed_and_read_back_by_the_methods_rules():
    from pairlens.validation import Spec

    assert format_value(None) == "auto" and format_value(True) == "true"
    assert format_value((0.1, 0.3)) == "0.1,0.3" and format_value(64) == "64"
    for spec, value in ((Spec("g", "bool"), False), (Spec("a", "pair"), (0.1, 0.3)),
                        (Spec("n", "int"), 64), (Spec("s", "float"), 0.15)):
        assert spec.coerce(format_value(value)) == value


def test_method_lists_and_scoped_parameters():
    assert parse_method_list("a,b", KNOWN) == [("a", {}), ("b", {})]
    assert parse_method_list("all", KNOWN) == [("a", {}), ("b", {}), ("c", {})]
    # unscoped: every selected method that has the key; scoped: that method; brackets win.
    # Values stay text: the methods' declared types convert them (pairlens.validation).
    assert parse_method_list("a,b,c", KNOWN, ["k=5"]) == [("a", {"k": "5"}), ("b", {"k": "5"}),
                                                          ("c", {})]
    assert parse_method_list("a,b", KNOWN, ["b.k=7", "guided=true"]) == [
        ("a", {}), ("b", {"k": "7", "guided": "true"})]
    assert parse_method_list("b[k=3;guided=true],b", KNOWN, ["b.k=9"]) == [
        ("b", {"k": "3", "guided": "true"}), ("b", {"k": "9"})]
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


def test_registered_methods_convert_and_check_the_values():
    import pairlens.methods  # noqa: F401
    from pairlens.methods.registry import parse_methods

    variants = parse_methods("input-x-gradient[guided=no],averaged-transforms",
                             ["strength=0,90", "averaged-transforms.steps=3"])
    assert variants == [("input-x-gradient", {"guided": False}),
                        ("averaged-transforms", {"strength": (0.0, 90.0), "steps": 3})]
    assert parse_methods("grad-cam,grad_cam") == [("grad-cam", {})]
    with pytest.raises(ValueError, match="steps must be"):
        parse_methods("averaged-transforms[steps=0]")
