"""The service's Prometheus metrics (``GET /metrics``), in a registry of the app's own."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric

from edgeloop.core.keys import CHALLENGER, CHAMPION

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: A regression target's plausible range (``schema.target_range``) is cut into this many buckets.
VALUE_BUCKETS = 10


class ValueHistogram:
    """A Prometheus histogram of predicted values, fed a whole request at a time.

    prometheus_client's ``Histogram.observe`` is one locked Python call per value: a 1,000-row
    request would pay it 1,000 times on the request path; here it is one numpy pass.
    """

    def __init__(self, name: str, documentation: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = sorted(float(b) for b in bounds)
        self._edges = np.asarray(self.bounds, dtype=np.float64)
        # counts[i]: values in (bounds[i-1], bounds[i]]; the last one: above every bound.
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, values: np.ndarray) -> None:
        """Count finite values (a regressor's answers; anything else is not a prediction)."""
        if len(values) == 1:  # the common request: no numpy call
            v = float(values[0])
            if v - v == 0.0:  # finite
                with self._lock:
                    self.counts[bisect.bisect_left(self.bounds, v)] += 1
                    self.sum += v
            return
        values = values[np.isfinite(values)]
        hits = np.bincount(np.searchsorted(self._edges, values), minlength=len(self.counts))
        total = float(values.sum())
        with self._lock:
            self.counts += hits
            self.sum += total

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self.counts).tolist()
            total = self.sum
        buckets = [(repr(b), c) for b, c in zip(self.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)


class Metrics:
    """Prometheus metrics in a registry of this app's own (never the process-global one).

    ``regression``: the champion's predicted values as a histogram too
    (``edgeloop_predicted_value``), bucketed over ``value_range`` (``schema.target_range``;
    without it only the count and the sum).
    """

    def __init__(
        self, *, regression: bool = False, value_range: Sequence[float] | None = None
    ) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        self.requests = counter(
            "edgeloop_requests", "HTTP requests by endpoint and status", "endpoint", "status"
        )
        self.latency = Histogram(
            "edgeloop_predict_latency_seconds",
            "Time to answer /predict, server side",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = counter("edgeloop_predicted_rows", "Rows scored, by alias", "alias")
        self.shadow = counter(
            "edgeloop_shadow_agreement",
            "Shadow-scored rows: does the challenger predict the champion's class (regression:"
            " a value within edge_cases.disagreement_tolerance x the target's std of it)?",
            "outcome",
        )
        self.values: ValueHistogram | None = None
        if regression:
            bounds: list[float] = []
            if value_range is not None:
                low, high = value_range
                bounds = np.linspace(low, high, VALUE_BUCKETS + 1).tolist()
            self.values = ValueHistogram(
                "edgeloop_predicted_value", "The champion's predicted values (regression)", bounds
            )
            r.register(self.values)
        self.errors = counter(
            "edgeloop_model_errors",
            "Scoring failures by model (alias, version)",
            "alias",
            "version",
        )
        self.shadow_dropped = counter(
            "edgeloop_shadow_dropped",
            "Requests not shadow-scored, by reason (queue_full, challenger_stalled, ...)",
            "reason",
        )
        self.log_dropped = counter(
            "edgeloop_prediction_log_dropped",
            "Prediction-log records dropped (queue full or write error)",
        )
        self.version = gauge(
            "edgeloop_model_version", "Registry version loaded per alias (0 = none)", "alias"
        )
        self.shadow_healthy = gauge(
            "edgeloop_shadow_healthy", "1 unless the challenger is stuck scoring"
        )
        self.shadow_queue = gauge(
            "edgeloop_shadow_queue_depth", "Requests waiting for the challenger"
        )
        self.worker_restarts = counter(
            "edgeloop_worker_restarts",
            "Times the worker process (shadow scoring, prediction log) died and was restarted",
        )
        self.registry_errors = counter(
            "edgeloop_registry_errors", "Failed registry reads and model loads", "kind"
        )
        # Known label sets exist from the start, so dashboards and alerts see zeros, not gaps.
        for alias in (CHAMPION, CHALLENGER):
            self.rows.labels(alias)
            self.version.labels(alias).set(0)
        for outcome in ("agree", "disagree"):
            self.shadow.labels(outcome)
        for reason in (
            "queue_full",
            "challenger_stalled",
            "schema_mismatch",
            "no_challenger",
            "worker_restarting",
            "worker_restarted",
        ):
            self.shadow_dropped.labels(reason)
        for kind in ("poll", "load"):
            self.registry_errors.labels(kind)
        # Children used on every request, resolved once.
        self.predict_status = {
            s: self.requests.labels("predict", str(s)) for s in (200, 400, 413, 422, 500, 503)
        }
        self.champion_rows = self.rows.labels(CHAMPION)
        self.challenger_rows = self.rows.labels(CHALLENGER)
        self.agree = self.shadow.labels("agree")
        self.disagree = self.shadow.labels("disagree")

    def count(self, endpoint: str, status: int) -> None:
        if endpoint == "predict" and status in self.predict_status:
            self.predict_status[status].inc()
        else:
            self.requests.labels(endpoint, str(status)).inc()
