# Container image: build it here with podman, offline, and test it end to end.
#
#   make image        wheelhouse + base image + podman build -> $(IMAGE)  (cold ~7 min, app change 4-6 min)
#   make image-run    serve the image on http://127.0.0.1:$(IMAGE_PORT) (Ctrl-C stops it)
#   make podman-e2e   helm template | podman kube play, query, memory limit, SIGTERM drain (part of `make test`)
#
# No container registry and no package index are reachable from inside a build on these machines, so:
#   - wheelhouse: the host's pip (which sees PyPI and the local CPU torch wheel) downloads every wheel
#     the image needs into ./wheelhouse (gitignored); the build installs from it with PIP_NO_INDEX=1.
#     The same Dockerfile without ./wheelhouse installs from PyPI and the PyTorch CPU index.
#   - base-image: python:3.11-slim when a registry answers, else Debian bookworm from debootstrap,
#     imported as localhost/debian:bookworm (bookworm's python3 is 3.11, the wheels' ABI).
#   - podman 4.3 here needs runc, cgroupfs and explicit ulimits: docker/containers.conf.

IMAGE ?= localhost/retriever:dev
# The one version (app/__init__.py): image label, chart version and appVersion (mk/package.mk).
APP_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' app/__init__.py)
IMAGE_PORT ?= 8000
# Articles in the baked demo index; the build embeds 10-30 per second on 2 cores (1000: 1-2 min).
DEMO_LIMIT ?= 1000
# Empty: choose (an existing localhost/debian:bookworm, else python:3.11-slim from a registry, else debootstrap).
BASE_IMAGE ?=
REGISTRY_BASE_IMAGE := docker.io/library/python:3.11-slim
LOCAL_BASE_IMAGE := localhost/debian:bookworm
# The Dockerfile stage: runtime (the full image) or index-only (no torch; needs an encoder service).
IMAGE_TARGET ?= runtime
# 1: the build reads only ./wheelhouse (offline); 0: PyPI + the PyTorch CPU index.
IMAGE_OFFLINE ?= 1
PODMAN_VERSION := 4.3
# podman reads its settings from $CONTAINERS_CONF (a machine that needs none can set it to /dev/null).
export CONTAINERS_CONF ?= $(CURDIR)/docker/containers.conf
PODMAN := podman
HELM ?= $(TOOLS)/bin/helm
IMAGE_BUILD_DIR := build/image
WHEELHOUSE := wheelhouse
# The image's Python (cp311, glibc 2.36): wheels are picked for it, not for the host's Python.
WHEEL_PLATFORMS := $(foreach v,$(shell seq 5 36),--platform manylinux_2_$(v)_x86_64) \
	--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64
WHEEL_TARGET := --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 $(WHEEL_PLATFORMS)

.PHONY: tools-podman wheelhouse base-image image image-run image-clean podman-e2e

# podman, runc, debootstrap from Debian (root, as on these machines and CI). Waits for another apt to finish.
tools-podman: ## install podman 4.3 + runc + debootstrap (Debian packages) if missing
	@if { command -v podman && command -v runc && command -v debootstrap; } >/dev/null \
		&& [ -x /usr/lib/podman/netavark ]; then :; else \
		echo "installing podman, runc, debootstrap"; \
		apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=900 \
			--no-install-recommends podman runc debootstrap netavark aardvark-dns containernetworking-plugins \
			catatonit conmon iptables >$(IMAGE_BUILD_DIR).apt.log 2>&1; }; \
		mkdir -p build; \
		apt_install || { apt-get update -q -o DPkg::Lock::Timeout=900 >/dev/null && apt_install; } \
			|| { tail -20 $(IMAGE_BUILD_DIR).apt.log; exit 1; }; \
	fi
	@podman --version | grep -q ' $(PODMAN_VERSION)\.' \
		|| echo "note: $$(podman --version) (tested with $(PODMAN_VERSION).x)"

# Every wheel the image installs, for the image's platform, from the host's pip configuration.
$(WHEELHOUSE)/.stamp: pyproject.toml constraints.txt docker/pyproject_requirements.py mk/image.mk | install
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(PY) docker/pyproject_requirements.py pyproject.toml demo > $(WHEELHOUSE)/requirements.txt
	set -o pipefail; $(PIP) download -q --disable-pip-version-check -d $(WHEELHOUSE) $(WHEEL_TARGET) \
		-c constraints.txt torch==$(TORCH_VERSION) -r $(WHEELHOUSE)/requirements.txt setuptools \
		2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	@ls $(WHEELHOUSE)/torch-$(TORCH_VERSION)*.whl >/dev/null \
		|| { echo "no torch $(TORCH_VERSION) wheel in $(WHEELHOUSE)" >&2; exit 1; }
	rm -f $(WHEELHOUSE)/requirements.txt
	@echo "$(WHEELHOUSE): $$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels, $$(du -sh $(WHEELHOUSE) | cut -f1)"
	touch $@

wheelhouse: $(WHEELHOUSE)/.stamp ## download torch $(TORCH_VERSION) (CPU) and every dependency into ./wheelhouse

# Writes the chosen base image's name to $(IMAGE_BUILD_DIR)/base-image for `make image`.
base-image: tools-podman ## base image: $(BASE_IMAGE), else localhost/debian:bookworm or python:3.11-slim
	@mkdir -p $(IMAGE_BUILD_DIR)
	@if [ -n "$(BASE_IMAGE)" ]; then ref="$(BASE_IMAGE)"; \
		$(PODMAN) image exists "$$ref" || $(PODMAN) pull -q "$$ref" >/dev/null; \
	elif $(PODMAN) image exists $(LOCAL_BASE_IMAGE); then ref=$(LOCAL_BASE_IMAGE); \
	elif $(PODMAN) image exists $(REGISTRY_BASE_IMAGE) \
		|| timeout 300 $(PODMAN) pull -q $(REGISTRY_BASE_IMAGE) >/dev/null 2>&1; then ref=$(REGISTRY_BASE_IMAGE); \
	else echo "no registry reachable: building $(LOCAL_BASE_IMAGE) with debootstrap"; \
		timeout 900 docker/base-image.sh $(LOCAL_BASE_IMAGE) $(IMAGE_BUILD_DIR) \
		&& ref=$(LOCAL_BASE_IMAGE) || exit 1; \
	fi; \
	echo "base image: $$ref"; echo "$$ref" > $(IMAGE_BUILD_DIR)/base-image

# podman's layer cache makes a rebuild after a code change cost the app layer + the demo index only.
# The image it replaces is removed (its layers stay while the new image shares them); `make image-clean`
# drops the build cache too.
image: base-image $(if $(filter 1,$(IMAGE_OFFLINE)),wheelhouse) ## build $(IMAGE) with podman (offline from ./wheelhouse)
	@start=$$(date +%s); \
	previous=$$($(PODMAN) image inspect --format '{{.Id}}' $(IMAGE) 2>/dev/null || true); \
	timeout 3600 $(PODMAN) build --layers \
		--build-arg BASE_IMAGE=$$(cat $(IMAGE_BUILD_DIR)/base-image) \
		--build-arg PIP_NO_INDEX=$(IMAGE_OFFLINE) \
		--build-arg TORCH_VERSION=$(TORCH_VERSION) \
		--build-arg DEMO_LIMIT=$(DEMO_LIMIT) \
		--build-arg REVISION=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
		--build-arg VERSION=$(APP_VERSION) \
		--build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ) \
		--target $(IMAGE_TARGET) \
		-t $(IMAGE) . >$(IMAGE_BUILD_DIR)/build.log 2>&1 \
		|| { tail -40 $(IMAGE_BUILD_DIR)/build.log; echo "podman build failed: $(IMAGE_BUILD_DIR)/build.log" >&2; exit 1; }; \
	echo "$(IMAGE): built in $$(( $$(date +%s) - start )) s," \
		"$$($(PODMAN) image inspect --format '{{.Size}}' $(IMAGE) | awk '{printf "%.0f MB", $$1/1e6}')"; \
	current=$$($(PODMAN) image inspect --format '{{.Id}}' $(IMAGE)); \
	if [ -n "$$previous" ] && [ "$$previous" != "$$current" ]; then $(PODMAN) rmi "$$previous" >/dev/null 2>&1 || true; fi

image-run: image ## serve $(IMAGE) on http://127.0.0.1:$(IMAGE_PORT) (the baked demo index)
	$(PODMAN) run --rm --name retriever-image-run -p 127.0.0.1:$(IMAGE_PORT):8000 --memory 3g $(IMAGE)

image-clean: ## remove $(IMAGE), its build cache and ./wheelhouse (the base image stays)
	-$(PODMAN) rmi -f $(IMAGE)
	-$(PODMAN) image prune -f
	rm -rf $(WHEELHOUSE) $(IMAGE_BUILD_DIR)

# End to end: the chart rendered by helm, run by podman kube play (k8s-tests/test_podman_e2e.py).
podman-e2e: image $(HELM) install ## chart + image under podman: /health, /retrieve, memory limit, SIGTERM drain
	RETRIEVER_E2E_IMAGE=$(IMAGE) HELM=$(HELM) $(VENV)/bin/pytest -q -p no:cacheprovider k8s-tests/test_podman_e2e.py

TEST_TARGETS += podman-e2e
