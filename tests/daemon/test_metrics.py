"""The latency histograms the event loop fills: Prometheus semantics without prometheus-client's
per-observation lock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from debugregd.metrics import LATENCY_BUCKETS, LatencyHistogram


def exposed(histogram: LatencyHistogram) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(histogram)
    text = generate_latest(registry).decode()
    (family,) = text_string_to_metric_families(text)
    assert family.type == "histogram"
    out = {}
    for sample in family.samples:
        key = sample.name.removeprefix(family.name)
        out[key + sample.labels.get("le", "")] = sample.value
    return out


def test_a_value_on_a_bound_counts_in_that_bucket_and_buckets_are_cumulative() -> None:
    h = LatencyHistogram("t_seconds", "test", (0.001, 0.01))
    for value in (0.0005, 0.001, 0.005, 0.01, 3.0):
        h.observe(value)
    assert exposed(h) == {
        "_bucket0.001": 2,
        "_bucket0.01": 4,
        "_bucket+Inf": 5,
        "_count": 5,
        "_sum": 0.0005 + 0.001 + 0.005 + 0.01 + 3.0,
    }


@given(st.lists(st.floats(min_value=0, max_value=10, allow_nan=False)))
def test_every_bucket_counts_the_observations_at_or_below_its_bound(values: list[float]) -> None:
    h = LatencyHistogram("t_seconds", "test", LATENCY_BUCKETS)
    for value in values:
        h.observe(value)
    out = exposed(h)
    for bound in LATENCY_BUCKETS:
        key = next(k for k in out if k.startswith("_bucket") and float(k[7:]) == bound)
        assert out[key] == sum(1 for v in values if v <= bound)
    assert out["_bucket+Inf"] == out["_count"] == len(values)
