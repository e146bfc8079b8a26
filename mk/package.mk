# Release artifacts: the Helm chart as a .tgz and the container image as an OCI archive, in dist/.
#
#   make package          both (the image build is the slow part: `make image`, cold ~7 min)
#   make package-chart    dist/retriever-$(APP_VERSION).tgz only (seconds)
#   make package-image    dist/retriever-image-$(APP_VERSION).oci.tar only
#
# One version for everything: __version__ in app/__init__.py (APP_VERSION, mk/image.mk). The chart is
# packaged with --version and --app-version from it, so the chart's default image tag (appVersion) is
# the tag of the image archive. Pushing them is the user's step: README "Install from a registry".
#
# podman is shared on this project's machines: the podman steps take /tmp/podman.lock themselves.
# Do not wrap `make package` in the same flock (it would wait on itself); set PODMAN_LOCK= when you
# already hold the lock, or on a machine without flock.

DIST := dist
PACKAGE_IMAGE ?= localhost/retriever:$(APP_VERSION)
PODMAN_LOCK ?= flock /tmp/podman.lock
CHART_ARCHIVE := $(DIST)/retriever-$(APP_VERSION).tgz
IMAGE_ARCHIVE := $(DIST)/retriever-image-$(APP_VERSION).oci.tar

.PHONY: package package-chart package-image

package: package-chart package-image ## dist/: the Helm chart (.tgz) and the image (OCI archive), ready to push
	@ls -l $(CHART_ARCHIVE) $(IMAGE_ARCHIVE)

package-chart: $(HELM) ## dist/retriever-VERSION.tgz: helm package, version and appVersion from app/__init__.py
	@mkdir -p $(DIST)
	$(HELM) lint --strict --quiet $(CHART)
	$(HELM) package $(CHART) --version $(APP_VERSION) --app-version $(APP_VERSION) --destination $(DIST)

# The image is `make image` with PACKAGE_IMAGE as its tag; the archive keeps that name, so
# `podman load -i` restores it and `skopeo copy oci-archive:...` pushes it anywhere.
package-image: ## dist/retriever-image-VERSION.oci.tar: make image + podman save --format oci-archive
	@mkdir -p $(DIST)
	$(PODMAN_LOCK) $(MAKE) --no-print-directory image IMAGE=$(PACKAGE_IMAGE)
	rm -f $(IMAGE_ARCHIVE).tmp
	$(PODMAN_LOCK) $(PODMAN) save --format oci-archive -o $(IMAGE_ARCHIVE).tmp $(PACKAGE_IMAGE)
	mv $(IMAGE_ARCHIVE).tmp $(IMAGE_ARCHIVE)
	@echo "$(IMAGE_ARCHIVE): $(PACKAGE_IMAGE), $$(du -h $(IMAGE_ARCHIVE) | cut -f1)"
