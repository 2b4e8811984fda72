"""The shared validators: one rule for numbers, flags, strings and keys, errors naming the field."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ollama_orchestra import ConfigError
from ollama_orchestra._validate import (
    boolean,
    finite_number,
    is_integer,
    is_number,
    is_positive_number,
    non_negative,
    positive,
    positive_int,
    reject_unknown_keys,
    string_list,
    string_table,
)


class OwnConfigError(ConfigError):
    """A caller's own subclass, as the simulator's ``OwnConfigError``."""


class TestPredicates:
    """A bool is never a number; positive numbers are finite."""

    @pytest.mark.parametrize("value", [True, False, "1", None, [1]])
    def test_not_numbers(self, value: Any) -> None:
        """Bools, strings, None and lists are neither integers nor numbers."""
        assert not is_integer(value) and not is_number(value)

    def test_numbers(self) -> None:
        """ints and floats are numbers; only ints are integers."""
        assert is_integer(3) and is_number(3) and is_number(2.5) and not is_integer(2.5)

    @pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, True])
    def test_not_positive(self, value: Any) -> None:
        """Zero, negatives, infinities, NaN and bools are not positive numbers."""
        assert not is_positive_number(value)

    def test_zero_allowed_when_asked(self) -> None:
        """``allow_zero`` admits 0 but still not negatives."""
        assert is_positive_number(0, allow_zero=True) and not is_positive_number(
            -1, allow_zero=True
        )


class TestRaisingChecks:
    """Each check raises the given ConfigError type naming ``owner.name`` and the value."""

    def test_positive_names_the_field(self) -> None:
        """positive() rejects 0 with the field and the rule."""
        with pytest.raises(ConfigError, match=r"^Owner\.x=0: must be a finite number > 0$"):
            positive("Owner", "x", 0)

    def test_non_negative_and_finite(self) -> None:
        """non_negative() takes 0 and refuses -1; finite_number() refuses inf and bools."""
        non_negative("Owner", "x", 0)
        with pytest.raises(ConfigError, match=">= 0"):
            non_negative("Owner", "x", -1)
        finite_number("Owner", "y", -2.5)
        for bad in (math.inf, True):
            with pytest.raises(ConfigError, match=r"^Owner\.y=.*: must be a finite number$"):
                finite_number("Owner", "y", bad)

    def test_error_type_is_the_callers(self) -> None:
        """A caller (e.g. the simulator) gets its own error type from the same check."""
        with pytest.raises(OwnConfigError, match="integer >= 1"):
            positive_int("HostProfile", "num_parallel", True, error=OwnConfigError)
        with pytest.raises(OwnConfigError, match="true or false"):
            boolean("HostProfile", "flag", 1, error=OwnConfigError)

    def test_string_collections(self) -> None:
        """string_list() names the bad item; string_table() refuses blank keys."""
        assert string_list("O", "models", ["a", "b"]) == ("a", "b")
        with pytest.raises(ConfigError, match=r"^O\.models\[1\]"):
            string_list("O", "models", ["a", " "])
        with pytest.raises(ConfigError, match="keys must be non-empty strings"):
            string_table("O", "labels", {"": "x"})

    def test_unknown_key_hides_its_value(self) -> None:
        """reject_unknown_keys() names the key and the allowed ones, never the value."""
        with pytest.raises(ConfigError) as info:
            reject_unknown_keys({"header": {"Authorization": "Bearer s3cret"}}, ["headers"], "t.")
        assert info.value.field == "t.header" and "s3cret" not in str(info.value)
        assert "expected one of headers" in str(info.value)
