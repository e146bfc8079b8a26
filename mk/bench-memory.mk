# Memory benchmarks (bench/memory.py, bench/convert_memory.py; results in bench/results/).
#
#   make bench-memory          one copy of the index per node: a >= 2 GiB synthetic Flat index
#                              (built once under .cache/bench-memory/, ~2.3 GB on disk), served by
#                              the real server with 1, 2 and 4 workers, mmap on and off; PSS/RSS of
#                              every server process after the same query load, index load time,
#                              start-to-ready. Writes memory.json + memory.md, prints the issue's
#                              checks with ratios, exits 1 when one fails; memory.png plots PSS
#                              against workers, mapped vs not (bench/memory_plot.py). Bounded: the
#                              script stops starting runs after BENCH_MEMORY_BUDGET_S, `timeout`
#                              ends it at 300 s.
#   make bench-convert-memory  peak RSS of converting a generated 1 GiB Search-R1 jsonl (~1 GB more
#                              on disk while it runs); fails above 300 MB.
#
# Every server is started on a free loopback port and stopped by PID; no GPU needed.

BENCH_MEMORY_BUDGET_S ?= 280
BENCH_MEMORY_ARGS ?=

.PHONY: bench-memory bench-convert-memory
bench-memory: install ## memory per worker (1/2/4 workers, mmap on/off) on a 2 GiB index; < 5 min
	timeout -k 10 300 $(PY) -m bench.memory --budget-s $(BENCH_MEMORY_BUDGET_S) $(BENCH_MEMORY_ARGS)

bench-convert-memory: install ## peak RSS converting a 1 GiB Search-R1 jsonl (limit 300 MB)
	timeout -k 10 900 $(PY) bench/convert_memory.py
