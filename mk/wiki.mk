# Search-R1's wiki-18 path: the chart's fetch -> import -> ready end to end under podman, and the
# scale rehearsal of `retriever import` and of cold/warm starts.
#
#   make podman-wiki-e2e       chart (fetch initContainer, two parts over HTTP on loopback) under podman
#   make bench-scale-import    2M x 768 Flat (~6 GB) + wiki-18-shaped corpus: import, cold/warm starts,
#                              RSS/PSS, first query with/without warm-up, faiss.read_index baseline;
#                              bench/results/scale-import.{json,md}. Bounded by SCALE_IMPORT_TIMEOUT_S.

# The image of this checkout (mk/image.mk builds it; podman's layer cache makes a rebuild cheap).
WIKI_IMAGE ?= $(IMAGE)
SCALE_IMPORT_ROWS ?= 2000000
SCALE_IMPORT_TIMEOUT_S ?= 1800
SCALE_IMPORT_ARGS ?=

.PHONY: podman-wiki-e2e bench-scale-import

podman-wiki-e2e: $(HELM) install ## chart fetch -> import -> ready -> known passage, under podman ($(WIKI_IMAGE))
	$(MAKE) image IMAGE=$(WIKI_IMAGE)
	RETRIEVER_E2E_IMAGE=$(WIKI_IMAGE) HELM=$(HELM) $(VENV)/bin/pytest -q -p no:cacheprovider k8s-tests/test_podman_wiki_e2e.py

TEST_TARGETS += podman-wiki-e2e

bench-scale-import: install ## import + cold/warm start rehearsal at 2M x 768 (< 30 min), extrapolated to 21M
	flock /tmp/bench.lock timeout -k 10 $(SCALE_IMPORT_TIMEOUT_S) $(PY) -m bench.scale_import \
		--rows $(SCALE_IMPORT_ROWS) $(SCALE_IMPORT_ARGS)
