"""templates/secret.yaml: the optional auth Secret, created or existing, mounted as a file."""

from __future__ import annotations

from chart_helpers import FULLNAME, ci, env_of, mount, render, render_error, volume


def test_auth_secret_created_from_values() -> None:
    import base64

    r = render([ci("auth")])
    secret = r.get("Secret")
    assert secret["metadata"]["name"] == f"{FULLNAME}-auth"
    assert base64.b64decode(secret["data"]["tokens"]).decode() == "ci-token-0123456789abcdef\nci-token-second\n"
    vol = volume(r.pod_spec, "auth")["secret"]
    assert vol["secretName"] == secret["metadata"]["name"]
    assert vol["items"] == [{"key": "tokens", "path": "tokens"}]
    m = mount(r.server, "auth")
    assert m["readOnly"] is True
    assert env_of(r.server)["RETRIEVER_AUTH_TOKENS_FILE"] == f"{m['mountPath']}/tokens"
    # Tokens are a file, never env values.
    assert "ci-token" not in str(r.server["env"])
    # The helm test pod authenticates with the same file.
    test = r.test_pod["spec"]
    assert volume(test, "auth")["secret"]["secretName"] == secret["metadata"]["name"]
    assert env_of(test["containers"][0])["TOKENS_FILE"] == f"{mount(test['containers'][0], 'auth')['mountPath']}/tokens"


def test_auth_existing_secret() -> None:
    r = render([ci("networkpolicy")])
    assert r.maybe("Secret") is None
    vol = volume(r.pod_spec, "auth")["secret"]
    assert vol["secretName"] == "retriever-tokens"
    assert vol["items"] == [{"key": "tokens.txt", "path": "tokens.txt"}]
    assert env_of(r.server)["RETRIEVER_AUTH_TOKENS_FILE"].endswith("/tokens.txt")


def test_auth_off_by_default() -> None:
    r = render()
    assert r.maybe("Secret") is None
    assert "RETRIEVER_AUTH_TOKENS_FILE" not in env_of(r.server)


def test_auth_without_tokens_fails() -> None:
    assert "neither auth.existingSecret nor auth.tokens" in render_error(set_values={"auth.enabled": True})
