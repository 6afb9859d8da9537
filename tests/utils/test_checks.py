"""The one integer check: any integer type, never bool, a message naming the argument."""

import numpy as np
import pytest

from sparse_attention.utils.checks import check_config_int, check_int, check_number


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3)])
def test_integers_of_any_type_pass_as_int(value):
    got = check_int("top_k", value)
    assert got == 3 and type(got) is int


@pytest.mark.parametrize("value,error,message", [
    (0, ValueError, "top_k must be an int >= 1, got 0"),
    (True, TypeError, "top_k must be an int >= 1, got bool True"),
    (2.0, TypeError, "top_k must be an int >= 1, got float 2.0"),
    ("4", TypeError, "top_k must be an int >= 1, got str '4'"),
    (None, TypeError, "top_k must be an int >= 1, got NoneType None"),
])
def test_bad_values_name_the_argument_and_the_bound(value, error, message):
    with pytest.raises(error) as info:
        check_int("top_k", value)
    assert str(info.value) == message


def test_minimum_none_and_config_fields():
    assert check_int("sinks", 0, 0) == 0 and check_int("n_clusters", None, allow_none=True) is None
    with pytest.raises(ValueError, match=r"model\.d_model must be an int >= 1"):
        check_config_int("model", "d_model", 0)
    check_config_int("model", "vocab_size", 0, allow_zero=True)
    with pytest.raises(ValueError, match=r"train\.lr must be a number > 0, got True"):
        check_number("train", "lr", True)
