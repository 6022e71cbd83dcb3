"""cdp_batcher.metrics with the real prometheus_client and OpenTelemetry SDK."""

from __future__ import annotations

import pytest

from cdp_batcher.testing import Collector

from conftest import MakeClient, run_python

pytestmark = pytest.mark.timeout(30)


def test_prometheus_exposes_stats_per_destination_and_reason(
    collector: Collector, make_client: MakeClient
) -> None:
    """Counters by destination (and reason), queue gauges, stalls and the last-delivery age, read
    from stats() at scrape time, in the text format Prometheus scrapes."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from cdp_batcher.metrics import register_prometheus

    registry = prometheus_client.CollectorRegistry()
    client = make_client()
    register_prometheus(client, registry)
    text = prometheus_client.generate_latest(registry).decode()
    assert 'cdp_batcher_events_delivered_total{destination="opencdp"} 0.0' in text
    assert "cdp_batcher_last_delivery_age_seconds{" not in text  # nothing delivered yet
    collector.fail_next(1, 400)
    client.track("u", "rejected")
    assert client.flush(timeout=5).destinations["opencdp"].failed == {"http_400": 1}
    for i in range(3):
        client.track("u", "ok", {"i": i})
    assert client.flush(timeout=5)
    text = prometheus_client.generate_latest(registry).decode()
    assert 'cdp_batcher_events_delivered_total{destination="opencdp"} 3.0' in text
    assert 'cdp_batcher_events_enqueued_total{destination="opencdp"} 4.0' in text
    assert 'cdp_batcher_events_failed_total{destination="opencdp",reason="http_400"} 1.0' in text
    assert 'cdp_batcher_stalls_total{destination="opencdp"} 0.0' in text
    assert 'cdp_batcher_queue_events{destination="opencdp"} 0.0' in text
    assert 'cdp_batcher_queue_bytes{destination="opencdp"} 0.0' in text
    assert 'cdp_batcher_in_flight_events{destination="opencdp"} 0.0' in text
    age = [line for line in text.splitlines() if line.startswith("cdp_batcher_last_delivery_age_seconds{")]
    assert len(age) == 1 and 0 <= float(age[0].split()[-1]) < 10
    client.shutdown(timeout=2)
    client.track("u", "after")  # dropped as shutdown: the drop alert's reason label
    text = prometheus_client.generate_latest(registry).decode()
    assert 'cdp_batcher_events_dropped_total{destination="opencdp",reason="shutdown"} 1.0' in text


def test_otel_observable_instruments(collector: Collector, make_client: MakeClient) -> None:
    """The same figures through OpenTelemetry's SDK with an in-memory reader."""
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from cdp_batcher.metrics import register_otel

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    client = make_client()
    register_otel(client, provider.get_meter("cdp_batcher"))
    for i in range(5):
        client.track("u", "otel", {"i": i})
    assert client.flush(timeout=5)
    data = reader.get_metrics_data()
    points: dict[str, list[tuple[dict[str, str], float]]] = {}
    units: dict[str, str] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                units[metric.name] = metric.unit
                points[metric.name] = [(dict(p.attributes), p.value) for p in metric.data.data_points]
    provider.shutdown()
    assert points["cdp_batcher.events.delivered"] == [({"destination": "opencdp"}, 5)]
    assert points["cdp_batcher.stalls"] == [({"destination": "opencdp"}, 0)]
    assert points["cdp_batcher.queue.events"] == [({"destination": "opencdp"}, 0)]
    assert units["cdp_batcher.events.delivered"] == "{event}" and units["cdp_batcher.queue.size"] == "By"
    ((attrs, age),) = points["cdp_batcher.last_delivery.age"]
    assert attrs == {"destination": "opencdp"} and 0 <= age < 10


def test_metrics_libraries_are_never_imported_by_the_package() -> None:
    """import cdp_batcher (and cdp_batcher.metrics) imports neither prometheus_client nor opentelemetry."""
    proc, _ = run_python(
        "import sys, cdp_batcher, cdp_batcher.metrics; "
        "print(any(m.split('.')[0] in ('prometheus_client', 'opentelemetry') for m in sys.modules))"
    )
    assert proc.stdout.strip() == "False", proc.stderr
