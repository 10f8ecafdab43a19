"""The one JSON encoding of journal rows, stream events and response bodies."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from debugregd import wire

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(0, 64), inner, max_size=4)
    ),
    max_leaves=20,
)


def as_json(value: Any) -> Any:
    """What the standard library makes of `value` (non-string keys become strings)."""
    return json.loads(json.dumps(value))


@given(json_values)
def test_every_value_encodes_as_the_standard_library_reads_it(value: Any) -> None:
    # Integer keys (snapshots key by CPU) and integers past 64 bits take the slower paths.
    assert json.loads(wire.encode(value)) == as_json(value)
    assert wire.dumps(value) == wire.encode(value).decode()


def test_the_encoding_is_compact() -> None:
    assert wire.encode({"a": [1, 2], 3: "x"}) == b'{"a":[1,2],"3":"x"}'
