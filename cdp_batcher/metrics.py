"""Metrics to alert on: ``stats()`` for Prometheus (``prometheus_client``) or OpenTelemetry.

    pip install 'cdp-batcher[prometheus]'     # or opentelemetry-api (and an SDK) for register_otel

Both read ``client.stats()`` when scraped or collected (nothing runs on the hot path, and each
read also runs the stall check). Neither library is imported by ``import cdp_batcher``; this
module imports them only inside the function that needs one.

Prometheus names (label ``destination``; ``reason`` on failed and dropped):
``cdp_batcher_events_enqueued_total``, ``cdp_batcher_events_delivered_total``,
``cdp_batcher_events_failed_total``, ``cdp_batcher_events_dropped_total``,
``cdp_batcher_retries_total``, ``cdp_batcher_stalls_total``, ``cdp_batcher_queue_events``,
``cdp_batcher_queue_bytes``, ``cdp_batcher_in_flight_events``,
``cdp_batcher_last_delivery_age_seconds`` (absent before the first delivery).

OpenTelemetry: the same as observable instruments under dotted names (``cdp_batcher.events.delivered``
...; counters have unit ``{event}``, the age ``s``, the queue size ``By``), attributes
``destination`` and ``reason``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._client import CDPClient

__all__ = ["register_otel", "register_prometheus"]

_COUNTERS = (
    # (name without _total, DestinationStats attribute, help)
    ("events_enqueued", "enqueued", "Calls offered to the destination"),
    ("events_delivered", "delivered", "Events the destination accepted"),
    ("retries", "retried", "Requests retried"),
    ("stalls", "stalls", "Times events waited with no delivery attempt (each logged once as an ERROR)"),
)
_GAUGES = (
    ("queue_events", "queued", "Events queued, not yet sent"),
    ("queue_bytes", "queued_bytes", "Encoded size of the queued events"),
    ("in_flight_events", "in_flight", "Events handed to a request, not yet resolved"),
)


class _Collector:
    """A prometheus_client custom collector reading one client's stats() per scrape."""

    def __init__(self, client: CDPClient) -> None:
        self._client = client

    def describe(self) -> list[Any]:  # no samples at registration: stats() runs per scrape only
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        destinations = self._client.stats().destinations
        for name, attr, doc in _COUNTERS:
            family = CounterMetricFamily(f"cdp_batcher_{name}", doc, labels=["destination"])
            for dest, s in destinations.items():
                family.add_metric([dest], getattr(s, attr))
            yield family
        for name, attr, doc in (
            ("events_failed", "failed", "Events that failed, by reason"),
            ("events_dropped", "dropped", "Events dropped, by reason"),
        ):
            family = CounterMetricFamily(f"cdp_batcher_{name}", doc, labels=["destination", "reason"])
            for dest, s in destinations.items():
                for reason, count in getattr(s, attr).items():
                    family.add_metric([dest, reason], count)
            yield family
        for name, attr, doc in _GAUGES:
            gauge = GaugeMetricFamily(f"cdp_batcher_{name}", doc, labels=["destination"])
            for dest, s in destinations.items():
                gauge.add_metric([dest], getattr(s, attr))
            yield gauge
        age = GaugeMetricFamily(
            "cdp_batcher_last_delivery_age_seconds",
            "Seconds since an event was last delivered",
            labels=["destination"],
        )
        for dest, s in destinations.items():
            if s.last_delivery_age is not None:
                age.add_metric([dest], s.last_delivery_age)
        yield age


def register_prometheus(client: CDPClient, registry: Any = None) -> Any:
    """Expose ``client.stats()`` to Prometheus through a custom collector registered in
    ``registry`` (default: ``prometheus_client.REGISTRY``). Returns the collector (pass it to
    ``registry.unregister`` to stop). Needs ``pip install 'cdp-batcher[prometheus]'``.

    >>> from cdp_batcher.metrics import register_prometheus  # doctest: +SKIP
    >>> register_prometheus(client)  # then prometheus_client.start_http_server(9100)  # doctest: +SKIP
    """
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "register_prometheus needs prometheus_client: pip install 'cdp-batcher[prometheus]'"
        ) from exc
    collector = _Collector(client)
    (prometheus_client.REGISTRY if registry is None else registry).register(collector)
    return collector


def register_otel(client: CDPClient, meter: Any = None) -> list[Any]:
    """Expose ``client.stats()`` as OpenTelemetry observable instruments on ``meter`` (default:
    ``opentelemetry.metrics.get_meter("cdp_batcher")``). Returns the instruments. Needs the
    ``opentelemetry-api`` package (and an SDK with a reader to export anything).

    >>> from cdp_batcher.metrics import register_otel  # doctest: +SKIP
    >>> register_otel(client)  # doctest: +SKIP
    """
    try:
        from opentelemetry import metrics as otel_metrics
    except ImportError as exc:
        raise ImportError("register_otel needs opentelemetry-api: pip install opentelemetry-api") from exc
    if meter is None:
        meter = otel_metrics.get_meter("cdp_batcher")
    Observation = otel_metrics.Observation

    def per_destination(attr: str) -> Any:
        def observe(options: Any) -> list[Any]:
            return [
                Observation(getattr(s, attr), {"destination": dest})
                for dest, s in client.stats().destinations.items()
            ]

        return observe

    def per_reason(attr: str) -> Any:
        def observe(options: Any) -> list[Any]:
            return [
                Observation(count, {"destination": dest, "reason": reason})
                for dest, s in client.stats().destinations.items()
                for reason, count in getattr(s, attr).items()
            ]

        return observe

    def age(options: Any) -> list[Any]:
        return [
            Observation(s.last_delivery_age, {"destination": dest})
            for dest, s in client.stats().destinations.items()
            if s.last_delivery_age is not None
        ]

    names = {"events_enqueued": "events.enqueued", "events_delivered": "events.delivered"}
    instruments: list[Any] = []
    for name, attr, doc in _COUNTERS:
        unit = "{event}" if name.startswith("events") else "1"
        dotted = names.get(name, name)
        instruments.append(
            meter.create_observable_counter(
                f"cdp_batcher.{dotted}", callbacks=[per_destination(attr)], unit=unit, description=doc
            )
        )
    for dotted, attr, doc in (
        ("events.failed", "failed", "Events that failed, by reason"),
        ("events.dropped", "dropped", "Events dropped, by reason"),
    ):
        instruments.append(
            meter.create_observable_counter(
                f"cdp_batcher.{dotted}", callbacks=[per_reason(attr)], unit="{event}", description=doc
            )
        )
    units = {"queue_events": ("queue.events", "{event}"), "queue_bytes": ("queue.size", "By")}
    units["in_flight_events"] = ("in_flight.events", "{event}")
    for name, attr, doc in _GAUGES:
        dotted, unit = units[name]
        instruments.append(
            meter.create_observable_gauge(
                f"cdp_batcher.{dotted}", callbacks=[per_destination(attr)], unit=unit, description=doc
            )
        )
    instruments.append(
        meter.create_observable_gauge(
            "cdp_batcher.last_delivery.age",
            callbacks=[age],
            unit="s",
            description="Seconds since an event was last delivered",
        )
    )
    return instruments
