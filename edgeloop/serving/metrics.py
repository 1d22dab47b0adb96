"""The service's Prometheus metrics (``GET /metrics``), in a registry of the app's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgeloop.core.keys import CHALLENGER, CHAMPION

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """Prometheus metrics in a registry of this app's own (never the process-global one)."""

    def __init__(self) -> None:
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
            "Shadow-scored rows: does the challenger predict the champion's class?",
            "outcome",
        )
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
