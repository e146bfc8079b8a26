"""Generate dashboards/retriever.json (the Grafana dashboard) from this file.

Edit the panels here, then run `python dashboards/generate.py` (or `make dashboards`); the test suite
(tests/observability/test_dashboard_static.py) fails when the committed JSON differs from what this
script produces, so the two cannot drift apart.

Conventions every panel follows (checked by tests/observability):
- the datasource is the `${datasource}` template variable, on the panel and on every target;
- every selector of a metric carries `namespace="$namespace"` and `pod=~"$pod"`;
- every range selector is `[$__rate_interval]` (or `[$__range]` for totals over the dashboard range);
- every panel has a unit; panel ids and target refIds are unique.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
# Selector fragment that scopes a metric to the chosen namespace and pods.
SEL = 'namespace="$namespace", pod=~"$pod"'
RETRIEVE = f'{SEL}, handler="/retrieve"'
RI = "$__rate_interval"

Json = dict[str, Any]


def target(expr: str, legend: str, ref: str, *, instant: bool = False) -> Json:
    return {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


class Layout:
    """Places panels left to right on Grafana's 24-column grid and hands out unique ids."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1
        self.panels: list[Json] = []

    def _id(self) -> int:
        pid = self.next_id
        self.next_id += 1
        return pid

    def row(self, title: str) -> None:
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def add(
        self,
        kind: str,
        title: str,
        description: str,
        unit: str,
        targets: list[Json],
        *,
        w: int = 12,
        h: int = 8,
        min_: float | None = None,
        max_: float | None = None,
        steps: Json | None = None,
        mappings: list[Json] | None = None,
        options: Json | None = None,
        custom: Json | None = None,
    ) -> None:
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_h
            self.row_h = 0
        defaults: Json = {"unit": unit}
        if min_ is not None:
            defaults["min"] = min_
        if max_ is not None:
            defaults["max"] = max_
        if steps is not None:
            defaults["thresholds"] = steps
        if mappings is not None:
            defaults["mappings"] = mappings
        if custom is not None:
            defaults["custom"] = custom
        panel: Json = {
            "type": kind,
            "id": self._id(),
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options or {},
            "targets": targets,
        }
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


DATASOURCE_VARIABLE: Json = {
    "name": "datasource",
    "label": "Data source",
    "type": "datasource",
    "query": "prometheus",
    "current": {"text": "Prometheus", "value": "prometheus"},
    "hide": 0,
    "refresh": 1,
    "regex": "",
    "options": [],
}
TS_OPTIONS: Json = {
    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
    "tooltip": {"mode": "multi", "sort": "desc"},
}
STAT_OPTIONS: Json = {
    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    "colorMode": "value",
    "graphMode": "area",
    "textMode": "auto",
}
READY_MAPPINGS: list[Json] = [
    {
        "type": "value",
        "options": {
            "0": {"text": "not ready", "color": "red", "index": 0},
            "1": {"text": "ready", "color": "green", "index": 1},
        },
    }
]


def retriever_dashboard() -> Json:
    lay = Layout()

    # ---------------------------------------------------------------- overview
    lay.row("Overview")
    lay.add(
        "stat",
        "Ready pods",
        "Pods whose /health answers 200 (retriever_ready = 1), out of the pods scraped.",
        "short",
        [
            target(f"sum(max by (pod) (retriever_ready{{{SEL}}}))", "ready", "A"),
            target(f"count(max by (pod) (retriever_ready{{{SEL}}}))", "scraped", "B"),
        ],
        w=4,
        h=5,
        options=STAT_OPTIONS,
    )
    lay.add(
        "stat",
        "Requests/s",
        "POST /retrieve requests per second over all selected pods.",
        "reqps",
        [target(f"sum(rate(http_requests_total{{{RETRIEVE}}}[{RI}]))", "requests/s", "A")],
        w=4,
        h=5,
        options=STAT_OPTIONS,
    )
    lay.add(
        "stat",
        "5xx ratio",
        "Share of POST /retrieve answered with 5xx (includes overload refusals, 503).",
        "percentunit",
        [
            target(
                f'(sum(rate(http_requests_total{{{RETRIEVE}, status="5xx"}}[{RI}]))'
                f" or sum(rate(http_requests_total{{{RETRIEVE}}}[{RI}])) * 0)"
                f" / sum(rate(http_requests_total{{{RETRIEVE}}}[{RI}]))",
                "5xx ratio",
                "A",
            )
        ],
        w=4,
        h=5,
        steps=thresholds((None, "green"), (0.01, "orange"), (0.05, "red")),
        options=STAT_OPTIONS,
    )
    lay.add(
        "stat",
        "p99 latency",
        "99th percentile of POST /retrieve latency (whole request, all queries in it).",
        "s",
        [
            target(
                f"histogram_quantile(0.99, sum by (le) "
                f"(rate(http_request_duration_seconds_bucket{{{RETRIEVE}}}[{RI}])))",
                "p99",
                "A",
            )
        ],
        w=4,
        h=5,
        steps=thresholds((None, "green"), (1, "orange"), (2.5, "red")),
        options=STAT_OPTIONS,
    )
    lay.add(
        "stat",
        "Index vectors",
        "Vectors in the loaded FAISS index (the largest pod's, should be equal on all).",
        "short",
        [target(f"max(retriever_index_vectors{{{SEL}}})", "vectors", "A")],
        w=4,
        h=5,
        options=STAT_OPTIONS,
    )
    lay.add(
        "stat",
        "Index load time",
        "Seconds the slowest selected pod took to load its index at startup.",
        "s",
        [target(f"max(retriever_index_load_seconds{{{SEL}}})", "load time", "A")],
        w=4,
        h=5,
        options=STAT_OPTIONS,
    )

    # ---------------------------------------------------------------- RED
    lay.row("Requests, errors, latency (POST /retrieve)")
    lay.add(
        "timeseries",
        "Throughput",
        "Requests per second by status class, and queries per second (one request carries many queries).",
        "reqps",
        [
            target(
                f"sum by (status) (rate(http_requests_total{{{RETRIEVE}}}[{RI}]))",
                "{{status}} requests/s",
                "A",
            ),
            target(f"sum(rate(retriever_queries_total{{{SEL}}}[{RI}]))", "queries/s", "B"),
        ],
        w=8,
        options=TS_OPTIONS,
        min_=0,
    )
    lay.add(
        "timeseries",
        "Error ratio",
        "Share of POST /retrieve answered 5xx (server errors and overload 503s) and 4xx (bad requests, "
        "429 when overload is configured as 429).",
        "percentunit",
        [
            target(
                f'(sum(rate(http_requests_total{{{RETRIEVE}, status="5xx"}}[{RI}]))'
                f" or sum(rate(http_requests_total{{{RETRIEVE}}}[{RI}])) * 0)"
                f" / sum(rate(http_requests_total{{{RETRIEVE}}}[{RI}]))",
                "5xx",
                "A",
            ),
            target(
                f'(sum(rate(http_requests_total{{{RETRIEVE}, status="4xx"}}[{RI}]))'
                f" or sum(rate(http_requests_total{{{RETRIEVE}}}[{RI}])) * 0)"
                f" / sum(rate(http_requests_total{{{RETRIEVE}}}[{RI}]))",
                "4xx",
                "B",
            ),
        ],
        w=8,
        min_=0,
        max_=1,
        steps=thresholds((None, "green"), (0.01, "orange"), (0.05, "red")),
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "Latency percentiles",
        "p50, p95 and p99 of POST /retrieve latency over the selected pods (buckets 1 ms .. 30 s).",
        "s",
        [
            target(
                f"histogram_quantile({q}, sum by (le) "
                f"(rate(http_request_duration_seconds_bucket{{{RETRIEVE}}}[{RI}])))",
                f"p{int(q * 100)}",
                ref,
            )
            for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
        ],
        w=8,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "p99 latency by pod",
        "Which pod is slow: p99 of POST /retrieve per pod.",
        "s",
        [
            target(
                f"histogram_quantile(0.99, sum by (pod, le) "
                f"(rate(http_request_duration_seconds_bucket{{{RETRIEVE}}}[{RI}])))",
                "{{pod}}",
                "A",
            )
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "Requests/s by pod",
        "Is the load balanced: POST /retrieve requests per second per pod.",
        "reqps",
        [
            target(
                f"sum by (pod) (rate(http_requests_total{{{RETRIEVE}}}[{RI}]))",
                "{{pod}}",
                "A",
            )
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )

    lay.add(
        "timeseries",
        "Requests/s by dialect",
        "Traffic per client wire format (search_r1, single_query, rllm, browsecomp_plus, flashrag, asearcher, "
        "mcp) and outcome (ok, or the refusal reason): every dialect shares the same batches.",
        "reqps",
        [
            target(
                f"sum by (dialect, outcome) (rate(retriever_dialect_requests_total{{{SEL}}}[{RI}]))",
                "{{dialect}} {{outcome}}",
                "A",
            )
        ],
        w=24,
        min_=0,
        options=TS_OPTIONS,
    )

    # ---------------------------------------------------------------- batching
    lay.row("Batching, queue and stages")
    lay.add(
        "timeseries",
        "Stage latency p95",
        "Where time goes: p95 per stage. queue_wait is per request; encode, search and fetch per batch.",
        "s",
        [
            target(
                f"histogram_quantile(0.95, sum by (stage, le) "
                f"(rate(retriever_stage_duration_seconds_bucket{{{SEL}}}[{RI}])))",
                "{{stage}}",
                "A",
            )
        ],
        w=8,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "Stage latency mean",
        "Mean seconds per stage (sum / count of retriever_stage_duration_seconds).",
        "s",
        [
            target(
                f"sum by (stage) (rate(retriever_stage_duration_seconds_sum{{{SEL}}}[{RI}]))"
                f" / sum by (stage) (rate(retriever_stage_duration_seconds_count{{{SEL}}}[{RI}]))",
                "{{stage}}",
                "A",
            )
        ],
        w=8,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "Batch size",
        "Queries per encoder/FAISS batch: mean, p50 and p95. Near 1 under load means batching is not "
        "coalescing; near the maximum means batches are full.",
        "short",
        [
            target(
                f"sum(rate(retriever_batch_size_sum{{{SEL}}}[{RI}]))"
                f" / sum(rate(retriever_batch_size_count{{{SEL}}}[{RI}]))",
                "mean",
                "A",
            ),
            target(
                f"histogram_quantile(0.5, sum by (le) (rate(retriever_batch_size_bucket{{{SEL}}}[{RI}])))",
                "p50",
                "B",
            ),
            target(
                f"histogram_quantile(0.95, sum by (le) (rate(retriever_batch_size_bucket{{{SEL}}}[{RI}])))",
                "p95",
                "C",
            ),
        ],
        w=8,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "Queue depth and in-flight",
        "Queries waiting for a batch, admitted /retrieve requests not yet answered, and HTTP requests "
        "in progress, per pod.",
        "short",
        [
            target(f"sum by (pod) (retriever_queue_depth{{{SEL}}})", "{{pod}} queued queries", "A"),
            target(f"sum by (pod) (retriever_inflight_requests{{{SEL}}})", "{{pod}} in-flight requests", "B"),
            target(
                f"sum by (pod) (http_requests_inprogress{{{RETRIEVE}}})",
                "{{pod}} HTTP in progress",
                "C",
            ),
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "Rejections by reason",
        "Refused requests per second by reason: queue_full means saturation (clients should back off), "
        "the others are client errors or pods not ready.",
        "reqps",
        [
            target(
                f"sum by (reason) (rate(retriever_rejections_total{{{SEL}}}[{RI}]))",
                "{{reason}}",
                "A",
            )
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )

    lay.add(
        "timeseries",
        "Duplicate work avoided",
        "Queries per second answered without computing them: from the result cache (only with "
        "--result-cache) and by joining an identical query already in flight; beside all queries answered.",
        "cps",
        [
            target(
                f'sum(rate(retriever_result_cache_lookups_total{{{SEL}, result="hit"}}[{RI}]))', "from the cache", "A"
            ),
            target(f"sum(rate(retriever_deduplicated_queries_total{{{SEL}}}[{RI}]))", "joined in flight", "B"),
            target(f"sum(rate(retriever_queries_total{{{SEL}}}[{RI}]))", "all queries answered", "C"),
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "Where each stage runs, index memory on the device",
        "Bytes of the index held on each device (the torch backend's copy; 0 on CPU FAISS), and which "
        "device and dtype the encode and search stages use (1 per stage, device, dtype).",
        "bytes",
        [
            target(f"sum by (device) (retriever_index_device_bytes{{{SEL}}})", "index on {{device}}", "A"),
            target(
                f"max by (stage, device, dtype) (retriever_stage_device_info{{{SEL}}})",
                "{{stage}} on {{device}} ({{dtype}})",
                "B",
            ),
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "Result cache size",
        "Answers and bytes the result cache holds (bounded by --result-cache-entries and --result-cache-bytes), "
        "and evictions per second.",
        "short",
        [
            target(f"sum(retriever_result_cache_entries{{{SEL}}})", "entries", "A"),
            target(f"sum(retriever_result_cache_bytes{{{SEL}}})", "bytes", "B"),
            target(f"sum(rate(retriever_result_cache_evictions_total{{{SEL}}}[{RI}]))", "evictions/s", "C"),
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "Worker restarts, index swaps, token reloads, encoder errors",
        "Events per second: workers the supervisor replaced (exited, hung by heartbeat, recycled by "
        "--limit-max-requests), index hot swaps, auth-token file re-reads and failed calls to a remote encoder "
        "(--encoder-url), each by outcome or reason.",
        "short",
        [
            target(
                f"sum by (reason) (rate(retriever_worker_restarts_total{{{SEL}}}[{RI}]))", "restart {{reason}}", "A"
            ),
            target(f"sum by (outcome) (rate(retriever_index_swaps_total{{{SEL}}}[{RI}]))", "swap {{outcome}}", "B"),
            target(
                f"sum by (outcome) (rate(retriever_auth_token_reloads_total{{{SEL}}}[{RI}]))", "tokens {{outcome}}", "C"
            ),
            target(f"sum by (reason) (rate(retriever_encoder_errors_total{{{SEL}}}[{RI}]))", "encoder {{reason}}", "D"),
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )

    # ---------------------------------------------------------------- resources
    lay.row("Resources and health")
    lay.add(
        "timeseries",
        "Memory against request and limit",
        "Per pod: anonymous memory (what the limit must hold; the memory alert watches it), mapped file "
        "pages (index and corpus, page cache the kernel reclaims), PSS (shared pages counted once) and "
        "RSS summed over worker processes, against the container's memory request and limit.",
        "bytes",
        [
            target(f"sum by (pod) (retriever_process_pss_bytes{{{SEL}}})", "{{pod}} PSS", "A"),
            target(
                f"sum by (pod) (retriever_process_resident_memory_bytes{{{SEL}}})",
                "{{pod}} RSS (sum over workers)",
                "B",
            ),
            target(
                f'max by (pod) (kube_pod_container_resource_requests{{{SEL}, resource="memory", '
                f'container="retriever"}})',
                "{{pod}} request",
                "C",
            ),
            target(f"sum by (pod) (retriever_process_anonymous_memory_bytes{{{SEL}}})", "{{pod}} anonymous", "E"),
            target(f"sum by (pod) (retriever_process_file_mapped_bytes{{{SEL}}})", "{{pod}} mapped file pages", "F"),
            target(
                f'max by (pod) (kube_pod_container_resource_limits{{{SEL}, resource="memory", container="retriever"}})',
                "{{pod}} limit",
                "D",
            ),
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "CPU",
        "CPU cores used per pod: the container's cgroup usage (cAdvisor) where scraped, else the sum of "
        "the worker processes' own CPU time; with the container's CPU request (kube-state-metrics).",
        "short",
        [
            target(
                f"sum by (pod) (rate(container_cpu_usage_seconds_total"
                f'{{{SEL}, container="retriever"}}[{RI}]))'
                f" or sum by (pod) (rate(retriever_process_cpu_seconds{{{SEL}}}[{RI}]))",
                "{{pod}} cores used",
                "A",
            ),
            target(
                f'max by (pod) (kube_pod_container_resource_requests{{{SEL}, resource="cpu", container="retriever"}})',
                "{{pod}} request",
                "B",
            ),
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "state-timeline",
        "Readiness",
        "Per pod: ready (GET /health 200) or not (loading, warming, failed, shutting down).",
        "none",
        [target(f"min by (pod) (retriever_ready{{{SEL}}})", "{{pod}}", "A")],
        w=8,
        mappings=READY_MAPPINGS,
        steps=thresholds((None, "red"), (1, "green")),
        options={"showValue": "never", "legend": {"showLegend": False}},
    )
    lay.add(
        "timeseries",
        "Warm-up progress",
        "Share of the mapped index pages touched by the background warm-up (1 = warm).",
        "percentunit",
        [target(f"min by (pod) (retriever_warmup_progress{{{SEL}}})", "{{pod}}", "A")],
        w=8,
        min_=0,
        max_=1,
        options=TS_OPTIONS,
    )
    lay.add(
        "stat",
        "Restarts",
        "Container restarts per pod over the dashboard range (kube-state-metrics; empty without it: see Uptime).",
        "short",
        [
            target(
                f"sum by (pod) (increase(kube_pod_container_status_restarts_total{{{SEL}, "
                f'container="retriever"}}[$__range]))',
                "{{pod}}",
                "A",
            )
        ],
        w=4,
        steps=thresholds((None, "green"), (1, "orange")),
        options=STAT_OPTIONS,
    )
    lay.add(
        "timeseries",
        "Uptime",
        "Age of the youngest worker process per pod: drops to zero on every container or worker "
        "(re)start, from the service's own metrics.",
        "s",
        [
            target(
                f"time() - max by (pod) (retriever_process_start_time_seconds{{{SEL}}})",
                "{{pod}}",
                "A",
            )
        ],
        w=4,
        min_=0,
        options=TS_OPTIONS,
    )

    # ---------------------------------------------------------------- index
    lay.row("Index")
    lay.add(
        "timeseries",
        "Index and corpus size",
        "Bytes of the FAISS index file and of the corpus store per pod (mapped: shared by the workers).",
        "bytes",
        [
            target(f"max by (pod) (retriever_index_bytes{{{SEL}}})", "{{pod}} index", "A"),
            target(f"max by (pod) (retriever_corpus_bytes{{{SEL}}})", "{{pod}} corpus", "B"),
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "table",
        "Build info",
        "What each pod serves: version, model, index type, memory-mapped or not.",
        "none",
        [
            target(
                f"max by (pod, version, model, index_type, mmap) (retriever_info{{{SEL}}})",
                "",
                "A",
                instant=True,
            )
        ],
        w=12,
        options={"showHeader": True},
    )
    lay.add(
        "timeseries",
        "Live recall (approximate index vs exact)",
        "Mean recall of served answers re-checked by exact search in the background (a sample of "
        "RETRIEVER_RECALL_SAMPLE_FRACTION of queries, last RETRIEVER_RECALL_WINDOW samples): k=1 is the top "
        "answer, k=topk the request's topk. The dashed line is the configured floor (RETRIEVER_RECALL_FLOOR). "
        "No data: the index is exact or no exact reference is configured.",
        "percentunit",
        [
            target(f"min by (pod, k) (retriever_live_recall{{{SEL}}})", "{{pod}} recall@{{k}}", "A"),
            target(f"max(retriever_live_recall_floor{{{SEL}}})", "floor", "B"),
        ],
        w=12,
        min_=0,
        max_=1,
        options=TS_OPTIONS,
        steps=thresholds((None, "red"), (0.9, "green")),
    )
    lay.add(
        "timeseries",
        "Recall guard samples",
        "Served queries re-checked exactly per second, and samples dropped unchecked because the guard's "
        "bounded queue was full (the guard yields to serving: drops grow under load, by design).",
        "ops",
        [
            target(f"sum by (pod) (rate(retriever_live_recall_samples_total{{{SEL}}}[{RI}]))", "{{pod}} checked", "A"),
            target(f"sum by (pod) (rate(retriever_live_recall_dropped_total{{{SEL}}}[{RI}]))", "{{pod}} dropped", "B"),
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )

    return {
        "uid": "retriever-overview",
        "title": "retriever",
        "description": "Dense retrieval (POST /retrieve): RED, batching, saturation, resources, index.",
        "tags": ["retriever", "search-r1"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                DATASOURCE_VARIABLE,
                {
                    "name": "namespace",
                    "label": "Namespace",
                    "type": "query",
                    "datasource": DS,
                    "query": {
                        "qryType": 1,
                        "query": "label_values(retriever_info, namespace)",
                        "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    },
                    "refresh": 2,
                    "sort": 1,
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "regex": "",
                    "options": [],
                },
                {
                    "name": "pod",
                    "label": "Pod",
                    "type": "query",
                    "datasource": DS,
                    "query": {
                        "qryType": 1,
                        "query": 'label_values(retriever_info{namespace="$namespace"}, pod)',
                        "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    },
                    "refresh": 2,
                    "sort": 1,
                    "hide": 0,
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "current": {"text": ["All"], "value": ["$__all"]},
                    "regex": "",
                    "options": [],
                },
            ]
        },
        "panels": lay.panels,
    }


# ---------------------------------------------------------------------------------------------- k6
K6 = 'testid=~"$testid"'


def k6_dashboard() -> Json:
    """k6 results pushed with `k6 run -o experimental-prometheus-rw --tag testid=<run>` (durations in s)."""
    lay = Layout()
    lay.row("k6 run")
    lay.add(
        "stat",
        "k6 requests/s",
        "HTTP requests per second sent by k6 (all scenarios of the selected runs).",
        "reqps",
        [target(f"sum(rate(k6_http_reqs_total{{{K6}}}[{RI}]))", "requests/s", "A")],
        w=6,
        h=5,
        options=STAT_OPTIONS,
    )
    lay.add(
        "stat",
        "k6 failed requests",
        "Share of requests k6 counted as failed (expected_response=false: a status outside 200-399 "
        "by default, or no response).",
        "percentunit",
        [
            target(
                f'(sum(rate(k6_http_reqs_total{{{K6}, expected_response="false"}}[{RI}]))'
                f" or sum(rate(k6_http_reqs_total{{{K6}}}[{RI}])) * 0)"
                f" / sum(rate(k6_http_reqs_total{{{K6}}}[{RI}]))",
                "failed",
                "A",
            )
        ],
        w=6,
        h=5,
        steps=thresholds((None, "green"), (0.01, "red")),
        options=STAT_OPTIONS,
    )
    lay.add(
        "stat",
        "k6 p95 duration",
        "Worst p95 of http_req_duration over request names (the SLO the load tests gate on).",
        "s",
        [target(f"max(k6_http_req_duration_p95{{{K6}}})", "p95", "A")],
        w=6,
        h=5,
        options=STAT_OPTIONS,
    )
    lay.add(
        "stat",
        "k6 VUs",
        "Virtual users running now.",
        "short",
        [target(f"sum(k6_vus{{{K6}}})", "VUs", "A")],
        w=6,
        h=5,
        options=STAT_OPTIONS,
    )
    lay.row("Requests")
    lay.add(
        "timeseries",
        "k6 requests/s by status",
        "Requests per second by HTTP status as k6 saw them (0: no response).",
        "reqps",
        [target(f"sum by (status) (rate(k6_http_reqs_total{{{K6}}}[{RI}]))", "{{status}}", "A")],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "k6 request duration",
        "http_req_duration p50/p95/p99 per request name (k6 trend stats, client side, seconds).",
        "s",
        [
            target(f"max by (name) (k6_http_req_duration_{stat}{{{K6}}})", f"{{{{name}}}} {stat}", ref)
            for stat, ref in (("p50", "A"), ("p95", "B"), ("p99", "C"))
        ],
        w=12,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "k6 failed request ratio",
        "http_req_failed per request name.",
        "percentunit",
        [target(f"max by (name) (k6_http_req_failed_rate{{{K6}}})", "{{name}}", "A")],
        w=8,
        min_=0,
        max_=1,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "k6 checks passing",
        "Share of each check that passed.",
        "percentunit",
        [target(f"min by (check) (k6_checks_rate{{{K6}}})", "{{check}}", "A")],
        w=8,
        min_=0,
        max_=1,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "k6 VUs and iterations",
        "Virtual users (running and allocated) and iterations per second.",
        "short",
        [
            target(f"sum(k6_vus{{{K6}}})", "VUs", "A"),
            target(f"sum(k6_vus_max{{{K6}}})", "VUs allocated", "B"),
            target(f"sum(rate(k6_iterations_total{{{K6}}}[{RI}]))", "iterations/s", "C"),
        ],
        w=8,
        min_=0,
        options=TS_OPTIONS,
    )
    lay.add(
        "timeseries",
        "k6 data transfer",
        "Bytes per second sent and received by k6.",
        "Bps",
        [
            target(f"sum(rate(k6_data_sent_total{{{K6}}}[{RI}]))", "sent", "A"),
            target(f"sum(rate(k6_data_received_total{{{K6}}}[{RI}]))", "received", "B"),
        ],
        w=24,
        min_=0,
        options=TS_OPTIONS,
    )
    return {
        "uid": "retriever-k6",
        "title": "retriever k6 load tests",
        "description": "k6 client-side results (Prometheus remote write output), one run per testid tag.",
        "tags": ["retriever", "k6"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timezone": "browser",
        "templating": {
            "list": [
                DATASOURCE_VARIABLE,
                {
                    "name": "testid",
                    "label": "Test run",
                    "type": "query",
                    "datasource": DS,
                    "query": {
                        "qryType": 1,
                        "query": "label_values(k6_http_reqs_total, testid)",
                        "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    },
                    "refresh": 2,
                    "sort": 2,
                    "hide": 0,
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "current": {"text": ["All"], "value": ["$__all"]},
                    "regex": "",
                    "options": [],
                },
            ]
        },
        "panels": lay.panels,
    }


DASHBOARDS = {"retriever.json": retriever_dashboard, "k6.json": k6_dashboard}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run python dashboards/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
