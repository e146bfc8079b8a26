# Observability: Grafana dashboards, Prometheus rules, and their tests against a real Prometheus.
#
#   tools-observability  prometheus + promtool (Debian package) and, from npm, the pinned
#                        @grafana/schema + ts-json-schema-generator (tools/grafana-schema, lockfile);
#                        the live test also runs k6 (tools-k6, mk/loadtest.mk) for dashboards/k6.json
#   observability-test   tests/observability: Grafana JSON Schema (generated at test time), our dashboard
#                        conventions, promtool check/test rules, and the live test (the real service on
#                        loopback, scraped by a real Prometheus under bounded load; ~2-3 minutes)
#   dashboard-preview    every panel rendered from Prometheus data into dashboards/preview/ (matplotlib)
#   dashboards           regenerate dashboards/*.json from dashboards/generate.py
#
# `make test` runs tests/observability through observability-test, so test-py leaves that folder out
# (plain `pytest tests` still collects it).

GRAFANA_SCHEMA_DIR := tools/grafana-schema
GRAFANA_SCHEMA_STAMP := $(GRAFANA_SCHEMA_DIR)/node_modules/.installed
OBS_PYTEST_ARGS ?=

.PHONY: tools-observability obs-system-tools observability-test dashboard-preview dashboards

# Debian packages, only when missing (`apt-get update` first, as a fresh machine needs it).
obs-system-tools:
	@missing=""; \
	command -v prometheus >/dev/null && command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
		echo "apt-get install$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# npm ci: exactly the versions in package-lock.json, into the gitignored node_modules.
$(GRAFANA_SCHEMA_STAMP): $(GRAFANA_SCHEMA_DIR)/package.json $(GRAFANA_SCHEMA_DIR)/package-lock.json | obs-system-tools
	cd $(GRAFANA_SCHEMA_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

tools-observability: obs-system-tools $(GRAFANA_SCHEMA_STAMP) ## install prometheus/promtool (apt) and the Grafana schema tools (npm)

observability-test: install tools-observability tools-k6 ## dashboards + alert rules against a real Prometheus scraping the real service
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/observability $(OBS_PYTEST_ARGS)

TEST_TARGETS += observability-test

# test-py runs `pytest tests`; observability-test runs this folder with its tools installed.
test-py: export PYTEST_ADDOPTS := $(PYTEST_ADDOPTS) --ignore=tests/observability

dashboard-preview: install tools-observability tools-k6 ## render every dashboard panel from a Prometheus scraping the demo under load into dashboards/preview/
	$(PY) bench/dashboard_preview.py --out dashboards/preview

dashboards: ## regenerate dashboards/*.json from dashboards/generate.py
	$(PY) dashboards/generate.py
