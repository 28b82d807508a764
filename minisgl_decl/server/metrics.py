"""Prometheus metrics, measured at the HTTP edge, plus the engine's gauges read at scrape time.

Each app gets its own `CollectorRegistry` (several servers in one test process never share
counters). Latencies are what a client sees: time to first token from the moment the
request arrived, inter-token latency between streamed tokens, end-to-end latency.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..engine.api import EngineStats

PREFIX = "minisgl"
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")
disable_created_metrics()  # no `*_created` series: they only add noise to a scrape

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        gauges = [
            ("requests_running", "requests decoding or prefilling in the engine", s.running),
            ("requests_waiting", "requests queued in the engine", s.waiting),
            ("kv_tokens_total", "KV pool size in tokens", s.kv_total),
            ("kv_tokens_used", "KV slots held by requests or by the prefix cache", s.kv_used),
            ("kv_tokens_evictable", "KV slots held only by the prefix cache (free-able)", s.kv_evictable),
            (
                "kv_cache_usage_ratio",
                "KV slots held by requests / pool size (prefix cache's evictable slots excluded)",
                (s.kv_used - s.kv_evictable) / s.kv_total if s.kv_total else 0.0,
            ),
            (
                "prefix_cache_hit_rate",
                "prompt tokens served from the prefix cache / prompt tokens, since start",
                s.cached_prompt_tokens / s.prompt_tokens if s.prompt_tokens else 0.0,
            ),
            ("preemptions", "requests preempted (recomputed later) since start", s.preemptions),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=float(value))


class ServerMetrics:
    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.cached_tokens = Counter(
            f"{PREFIX}_cached_prompt_tokens", "prompt tokens served from the prefix cache", registry=r
        )
        self.generated_tokens = Counter(f"{PREFIX}_generation_tokens", "generated tokens", registry=r)
        self.finished = Counter(
            f"{PREFIX}_request_finished", "finished generations by finish_reason", ["finish_reason"], registry=r
        )
        self.aborted = Counter(
            f"{PREFIX}_requests_aborted",
            "generations aborted before they finished (client disconnected, or the server stopped)",
            registry=r,
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds", "request arrival to first token", buckets=_TTFT_BUCKETS, registry=r
        )
        self.itl = Histogram(
            f"{PREFIX}_inter_token_latency_seconds",
            "time between consecutive output tokens",
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            f"{PREFIX}_e2e_request_latency_seconds", "request arrival to last token", buckets=_E2E_BUCKETS, registry=r
        )
        r.register(_EngineCollector(stats))

    def count_request(self, path: str, status: int) -> None:
        self.requests.labels(path if path in ENDPOINTS else "other", str(status)).inc()
