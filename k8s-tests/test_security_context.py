"""Every pod the chart renders (templates/deployment.yaml, templates/tests/): non-root, read-only, no capabilities."""

from __future__ import annotations

from typing import Any

from chart_helpers import Rendered, env_of, mount, volume


def _all_pod_specs(r: Rendered) -> list[dict[str, Any]]:
    return [r.pod_spec, r.test_pod["spec"]]


def test_security_context(ci_rendered: Rendered) -> None:
    for spec in _all_pod_specs(ci_rendered):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
            assert mount(c, "tmp")["mountPath"] == "/tmp"
    # Writable emptyDirs where the server writes: /tmp and its cache dir.
    spec, server = ci_rendered.pod_spec, ci_rendered.server
    assert "emptyDir" in volume(spec, "tmp") and "emptyDir" in volume(spec, "cache")
    assert mount(server, "cache")["mountPath"] == "/var/cache/retriever"
    assert env_of(server)["RETRIEVER_DATA_DIR"] == "/var/cache/retriever"
    sa = ci_rendered.get("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
