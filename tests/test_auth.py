"""Access control: bearer tokens (env and file), 401 without detail, open probe paths, CORS.

Real servers on loopback: one with tokens from both sources and CORS on, one with custom
open paths, and the session server (no tokens, CORS off) for the defaults.
"""

from __future__ import annotations

import hmac
import inspect
import re
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import httpx
import pytest

from app.guards import AuthMiddleware
from tests.helpers import RunningServer, free_port, run_cli, run_server

ENV_TOKENS = ("env-token-one", "env-token-two")
FILE_TOKENS = ("file-token-A-7f3c9e", "file-token-B-d41d8c")
ORIGIN = "https://notebook.example.org"
QUERY = {"queries": ["ancient greek philosopher"], "topk": 2}


def write_tokens(path: Path) -> Path:
    # Comments, blank lines, surrounding blanks and CRLF endings, as a hand-edited Secret may hold.
    path.write_text(f"# retriever tokens\n{FILE_TOKENS[0]}\r\n\n   {FILE_TOKENS[1]}   \n# not-a-token\n")
    return path


@pytest.fixture(scope="module")
def auth_server(demo_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("auth")
    env = {
        "RETRIEVER_AUTH_TOKENS": ",".join(ENV_TOKENS),
        "RETRIEVER_AUTH_TOKENS_FILE": str(write_tokens(tmp / "tokens")),
        "RETRIEVER_CORS_ORIGINS": ORIGIN,
    }
    with run_server(["--index-dir", str(demo_index)], tmp, env=env) as running:
        yield running


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def post(server: RunningServer, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/retrieve", json=QUERY, headers=headers, timeout=30)


@pytest.mark.parametrize("token", ENV_TOKENS + FILE_TOKENS)
def test_every_token_from_env_and_file_is_accepted(auth_server: RunningServer, token: str) -> None:
    response = post(auth_server, bearer(token))
    assert response.status_code == 200, response.text
    assert len(response.json()["result"][0]) == 2
    info = httpx.get(f"{auth_server.url}/info", headers=bearer(token))
    assert info.status_code == 200 and info.json()["limits"]["max_topk"] == 100


def test_scheme_is_case_insensitive(auth_server: RunningServer) -> None:
    assert post(auth_server, {"authorization": f"bearer {ENV_TOKENS[0]}"}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": "Bearer wrong-token"},
        {"authorization": f"Bearer {ENV_TOKENS[0]}x"},  # a real token plus one character
        {"authorization": f"Bearer {ENV_TOKENS[0][:-1]}"},  # a real token minus one
        {"authorization": f"Bearer {ENV_TOKENS[0]},{ENV_TOKENS[1]}"},  # the env list itself
        {"authorization": "Bearer # retriever tokens"},  # a comment line of the file
        {"authorization": f"Basic {ENV_TOKENS[0]}"},
        {"authorization": ENV_TOKENS[0]},
        {"x-api-key": ENV_TOKENS[0]},
    ],
    ids=lambda h: repr(h)[:60],
)
def test_missing_or_wrong_token_is_401_without_detail(
    auth_server: RunningServer, headers: dict[str, str] | None
) -> None:
    for response in (post(auth_server, headers), httpx.get(f"{auth_server.url}/info", headers=headers)):
        assert response.status_code == 401
        # The same bytes whatever was wrong: nothing tells a missing token from a near miss.
        assert response.content == b'{"detail": "unauthorized"}'
        assert response.headers["www-authenticate"] == "Bearer"


def test_rejections_are_counted_and_tokens_never_logged(auth_server: RunningServer) -> None:
    def unauthorized() -> float:
        text = httpx.get(f"{auth_server.url}/metrics").text
        match = re.search(r'^retriever_rejections_total\{reason="unauthorized"\} ([0-9.e+]+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    before = unauthorized()
    for _ in range(3):
        assert post(auth_server, bearer("nope")).status_code == 401
    assert unauthorized() == before + 3
    log = auth_server.log()
    assert not [t for t in ENV_TOKENS + FILE_TOKENS if t in log]


@pytest.mark.parametrize("path", ["/health", "/livez", "/metrics"])
def test_probe_and_scrape_paths_stay_open(auth_server: RunningServer, path: str) -> None:
    response = httpx.get(f"{auth_server.url}{path}")
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/info"])
def test_everything_else_needs_a_token(auth_server: RunningServer, path: str) -> None:
    assert httpx.get(f"{auth_server.url}{path}").status_code == 401
    assert httpx.get(f"{auth_server.url}{path}", headers=bearer(FILE_TOKENS[0])).status_code == 200


def test_unknown_paths_are_401_not_404_without_a_token(auth_server: RunningServer) -> None:
    """Default deny: without a token nothing reveals which paths exist."""
    assert httpx.get(f"{auth_server.url}/admin").status_code == 401
    assert httpx.get(f"{auth_server.url}/health/").status_code == 401  # open paths match exactly
    assert httpx.get(f"{auth_server.url}/admin", headers=bearer(ENV_TOKENS[1])).status_code == 404


def test_cors_when_configured(auth_server: RunningServer) -> None:
    preflight = httpx.options(
        f"{auth_server.url}/retrieve",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200  # answered before authentication: preflights carry no token
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    simple = post(auth_server, bearer(ENV_TOKENS[0]) | {"origin": ORIGIN})
    assert simple.status_code == 200 and simple.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(
        f"{auth_server.url}/retrieve",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers


def test_without_tokens_cors_is_off_and_the_api_open(server: RunningServer) -> None:
    """The session server: no RETRIEVER_AUTH_* and no RETRIEVER_CORS_ORIGINS (the defaults)."""
    preflight = httpx.options(
        f"{server.url}/retrieve", headers={"origin": ORIGIN, "access-control-request-method": "POST"}
    )
    assert preflight.status_code == 405
    assert not [h for h in preflight.headers if h.startswith("access-control-")]
    response = httpx.post(f"{server.url}/retrieve", json=QUERY, headers={"origin": ORIGIN}, timeout=30)
    assert response.status_code == 200
    assert not [h for h in response.headers if h.startswith("access-control-")]


def test_open_paths_are_configurable(demo_index: Path, tmp_path: Path) -> None:
    """Only /livez open: /health and /metrics then need a token too. Authentication answers
    before the index is loaded, so this server is tested while it still loads."""
    env = {
        "RETRIEVER_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens")),
        "RETRIEVER_AUTH_OPEN_PATHS": "/livez",
    }
    with run_server(["--index-dir", str(demo_index)], tmp_path, env=env, wait=False) as server:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{server.url}/livez", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"{server.url}/livez").status_code == 200
        for path in ("/health", "/metrics", "/info"):
            assert httpx.get(f"{server.url}{path}").status_code == 401, path
            assert httpx.get(f"{server.url}{path}", headers=bearer(FILE_TOKENS[1])).status_code in (200, 503), path
        assert post(server, bearer("nope")).status_code == 401
        assert post(server, bearer(FILE_TOKENS[0])).status_code in (200, 503)  # 503 while loading


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RETRIEVER_AUTH_TOKENS_FILE": "{tmp}/missing"}, "missing: cannot read auth tokens file (No such file"),
        ({"RETRIEVER_AUTH_TOKENS_FILE": "{tmp}/comments"}, "comments: auth tokens file holds no token"),
        (
            {"RETRIEVER_AUTH_TOKENS_FILE": "{tmp}/comments", "RETRIEVER_AUTH_TOKENS": "x"},
            "comments: auth tokens file holds no token",
        ),
        ({"RETRIEVER_AUTH_TOKENS_FILE": "{tmp}/latin1"}, "latin1: auth tokens file is not UTF-8 text"),
        ({"RETRIEVER_AUTH_TOKENS": ""}, "RETRIEVER_AUTH_TOKENS is set but holds no token"),
        ({"RETRIEVER_AUTH_TOKENS": " , "}, "RETRIEVER_AUTH_TOKENS is set but holds no token"),
    ],
)
def test_unusable_token_configuration_refuses_to_start(
    demo_index: Path, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    """Never fall back to serving without authentication when tokens were asked for."""
    (tmp_path / "comments").write_text("# only a comment\n\n   \n")
    (tmp_path / "latin1").write_bytes(b"caf\xe9-token\n")
    env = {key: value.format(tmp=tmp_path) for key, value in env.items()}
    result = run_cli("serve", "--index-dir", str(demo_index), "--port", str(free_port()), env=env, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_tokens_are_compared_in_constant_time() -> None:
    """hmac.compare_digest against every configured token, with no early exit on a match."""
    source = inspect.getsource(AuthMiddleware._authorised)
    assert "hmac.compare_digest(" in source
    # No ordinary comparison of the presented token (== stops at the first differing byte).
    assert not re.search(r"presented\s*(?:==|!=|\bin\b)|(?:==|!=)\s*(?:presented|token)\b|\btoken\s*(?:==|!=)", source)
    tokens = [b"alpha", b"bravo", b"charlie"]
    middleware = AuthMiddleware(app=None, tokens=tokens, open_paths=set())  # type: ignore[arg-type]
    with mock.patch("app.guards.hmac.compare_digest", wraps=hmac.compare_digest) as compare:
        scope = {"type": "http", "path": "/retrieve", "headers": [(b"authorization", b"Bearer alpha")]}
        assert middleware._authorised(scope)
        assert compare.call_count == len(tokens)  # the first token matched; the others were still compared
        compare.reset_mock()
        scope["headers"] = [(b"authorization", b"Bearer zulu")]
        assert not middleware._authorised(scope)
        assert compare.call_count == len(tokens)


def test_load_client_takes_its_token_from_the_environment(auth_server: RunningServer) -> None:
    """`retriever load` reads RETRIEVER_TOKEN, so the secret need not appear on a command line (`ps`)."""
    args = ("load", "--server", auth_server.url, "--requests", "4", "--concurrency", "2")
    without = run_cli(*args, timeout=120)
    assert without.returncode == 1 and "401" in without.stdout  # every request refused: the run failed
    with_env = run_cli(*args, env={"RETRIEVER_TOKEN": ENV_TOKENS[1]}, timeout=120)
    assert with_env.returncode == 0, with_env.stdout + with_env.stderr
    assert "success rate  100.00%" in with_env.stdout
