# Helm chart: sync its dashboards/alerts from the repo, lint it, test it (k8s-tests/).
# Tools come from mk/tools.mk (pinned, in .tools/); variables there are used in recipes only,
# since that file is included after this one.

CHART := helm/retriever
# Extra pytest arguments, e.g. K8S_PYTEST_ARGS="--cluster" for the live-cluster tests.
K8S_PYTEST_ARGS ?=

.PHONY: k8s-test chart-sync chart-lint

# The repo's dashboards/ is the source of truth; the chart carries copies because Helm can only
# read files inside the chart. k8s-tests/test_chart_files.py fails when the copies drift.
chart-sync: ## copy dashboards/*.json and dashboards/alerts/*.yaml into helm/retriever/files/
	@mkdir -p $(CHART)/files/dashboards $(CHART)/files/alerts
	@find $(CHART)/files/dashboards -maxdepth 1 -type f -name '*.json' -delete
	@find $(CHART)/files/alerts -maxdepth 1 -type f -name '*.yaml' -delete
	@shopt -s nullglob; \
	for f in dashboards/*.json; do cp "$$f" $(CHART)/files/dashboards/ && echo "synced $$f"; done; \
	for f in dashboards/alerts/*.yaml; do cp "$$f" $(CHART)/files/alerts/ && echo "synced $$f"; done

chart-lint: tools-k8s ## helm lint --strict with every ci values file, then checkov with the listed skips
	@set -e; for f in $(CHART)/ci/*-values.yaml; do \
		echo "helm lint --strict -f $$f"; $(HELM) lint --strict --quiet $(CHART) -f "$$f"; done
	@rm -rf $(TOOLS)/rendered && mkdir -p $(TOOLS)/rendered
	@for f in $(CHART)/ci/*-values.yaml; do \
		$(HELM) template retriever $(CHART) --namespace retriever -f "$$f" \
			> $(TOOLS)/rendered/$$(basename "$$f" .yaml).yaml; done
	BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE $(CHECKOV) --quiet --compact \
		--skip-download --framework kubernetes -d $(TOOLS)/rendered \
		--skip-check "$$($(TOOLS_VENV)/bin/python -c 'import yaml; print(",".join(s["id"] for s in yaml.safe_load(open("k8s-tests/checkov-skips.yaml"))["skip"]))')"

k8s-test: tools-k8s install ## chart tests: lint, render, kubernetes-validate 1.29-1.37, rules, checkov, NOTES (live with K8S_PYTEST_ARGS=--cluster)
	HELM=$(HELM) KUBECTL=$(KUBECTL) KUBE_VALIDATE=$(KUBE_VALIDATE) CHECKOV=$(CHECKOV) \
		$(VENV)/bin/pytest -q -p no:cacheprovider k8s-tests --ignore=k8s-tests/test_podman_e2e.py \
		--ignore=k8s-tests/test_podman_encoder_pair.py \
		--ignore=k8s-tests/test_podman_wiki_e2e.py $(K8S_PYTEST_ARGS)

TEST_TARGETS += k8s-test
