"""One check of a usable code length, with the messages the model spec and the metrics have always given."""

import pytest

from ml.bits import MAX_BITS, check_bits
from ml.models import ModelSpec


@pytest.mark.parametrize("bits", [8, 16, 64, 1024, 2048])
def test_positive_multiples_of_8_pass(bits):
    assert check_bits(bits) == bits


@pytest.mark.parametrize("bits", [0, -8, 12])
def test_others_are_named(bits):
    with pytest.raises(ValueError, match=f"^bits must be a positive multiple of 8, got {bits}$"):
        check_bits(bits)


@pytest.mark.parametrize("bits", [0, 12, 1032])
def test_a_model_takes_at_most_max_bits(bits):
    assert check_bits(MAX_BITS, most=MAX_BITS) == MAX_BITS
    with pytest.raises(ValueError, match=rf"^bits must be a multiple of 8 in \[8, 1024\], got {bits}$"):
        ModelSpec(bits=bits).validate()
