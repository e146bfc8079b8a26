# Throughput benchmark (bench/, see bench/README.md).
#
#   make bench      offline limit vs the server in batching and per-request mode, demo index and a
#                   1M x 384 synthetic Flat index (built once under .cache/bench/, ~1 min, 1.6 GB):
#                   writes bench/results/latest.{json,md,png}. Bounded: the runner stops starting
#                   load points after BENCH_BUDGET_S and `timeout` ends it at BENCH_TIMEOUT_S.
#                   Then bench/runtimes.py: torch vs onnx vs openvino (offline limit, served at c=64) with the
#                   demo MiniLM and with the 768-d all-mpnet-base-v2 (make model-mpnet), and a
#                   rollout-shaped trace with dedup + result cache off / on: bench/results/runtimes.{json,md}.
#   make bench-ann  recall@10 vs Flat and queries/s for HNSW / IVF / IVF-PQ / SQ8 on the demo corpus
#                   and the synthetic 1M set: bench/results/ann.{json,md} (indexes cached in .cache/bench/ann).
#
# Every server is started on a free loopback port by the runner and stopped by its PID.

BENCH_BUDGET_S ?= 780
BENCH_TIMEOUT_S ?= 890
BENCH_ARGS ?=
RUNTIMES_TIMEOUT_S ?= 1500
ANN_TIMEOUT_S ?= 3000
ANN_ARGS ?=

.PHONY: bench bench-ann bench-report bench-runtimes
bench: install model-mpnet ## throughput benchmark: offline limit vs batching vs per-request, encoder runtimes (384-d and 768-d), rollout trace (< 40 min)
	timeout -k 10 $(BENCH_TIMEOUT_S) $(PY) -m bench.run --budget $(BENCH_BUDGET_S) $(BENCH_ARGS)
	timeout -k 10 $(RUNTIMES_TIMEOUT_S) $(PY) -m bench.runtimes

bench-runtimes: install model-mpnet ## encoder runtimes (torch / onnx / openvino) and the rollout trace with dedup + cache off / on
	timeout -k 10 $(RUNTIMES_TIMEOUT_S) $(PY) -m bench.runtimes

bench-ann: install ## ANN table: recall@10 and queries/s of HNSW, IVF, IVF-PQ, SQ8 vs Flat
	timeout -k 10 $(ANN_TIMEOUT_S) $(PY) -m bench.ann $(ANN_ARGS)

bench-report: install ## redraw bench/results/latest.md and latest.png from latest.json
	$(PY) -m bench.report
