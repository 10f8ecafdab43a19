"""The load tester's own HTTP engine: the server-sent event decoder and plain-HTTP URLs."""

from __future__ import annotations

import pytest

from debugreg.loadtest.transport import RawEngine, SseEvent, _SseDecoder

STREAM = (
    b": ping\n\n"
    b'id: 7\nevent: evicted\ndata: {"id":7}\n\n'
    b'id: 8\r\nevent: moved\r\ndata: {"a":\r\ndata: 1}\r\n\r\n'
    b"data: no id of its own\n\n"
)


def test_events_survive_any_split_of_the_bytes() -> None:
    expected = [
        SseEvent("7", "evicted", '{"id":7}'),
        SseEvent("8", "moved", '{"a":\n1}'),
        SseEvent("8", "message", "no id of its own"),  # the last event id carries over
    ]
    for size in (1, 2, 3, 7, 16, len(STREAM)):
        decoder = _SseDecoder()
        events = []
        for start in range(0, len(STREAM), size):
            events += decoder.feed(STREAM[start : start + size])
        assert events == expected, size


def test_the_raw_engine_speaks_plain_http_only() -> None:
    with pytest.raises(ValueError, match="http://"):
        RawEngine("https://127.0.0.1:8765", max_connections=1)
    engine = RawEngine("http://127.0.0.1:8765/prefix/", max_connections=1)
    assert (engine.host, engine.port, engine.prefix) == ("127.0.0.1", 8765, "/prefix")
