"""A changed tokens file takes effect without a restart; an unusable one never drops authentication."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.guards import AuthMiddleware, TokenSource
from app.settings import Settings


def source_for(path: Path) -> TokenSource:
    return TokenSource(Settings(auth_tokens_file=path), check_interval_s=0.0)


def authorised(middleware: AuthMiddleware, token: str) -> bool:
    scope = {"type": "http", "path": "/retrieve", "headers": [(b"authorization", f"Bearer {token}".encode())]}
    return middleware._authorised(scope)


def test_a_rewritten_tokens_file_replaces_the_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("old-token\n")
    middleware = AuthMiddleware(app=None, tokens=source_for(path), open_paths=set())  # type: ignore[arg-type]
    assert authorised(middleware, "old-token")
    path.write_text("new-token\n")
    assert authorised(middleware, "new-token")
    assert not authorised(middleware, "old-token")


def test_a_secret_swapped_by_symlink_is_followed(tmp_path: Path) -> None:
    """Kubernetes updates a mounted Secret by pointing ..data at a new directory."""
    for version, token in (("v1", "first"), ("v2", "second")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "tokens").write_text(token + "\n")
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "tokens").symlink_to("..data/tokens")
    source = source_for(tmp_path / "tokens")
    assert source.current() == [b"first"]
    (tmp_path / "..data_new").symlink_to("v2")
    os.replace(tmp_path / "..data_new", tmp_path / "..data")
    assert source.current() == [b"second"]


def test_an_emptied_or_vanished_file_keeps_the_previous_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("kept\n")
    source = source_for(path)
    path.write_text("")
    assert source.current() == [b"kept"]
    path.unlink()
    assert source.current() == [b"kept"]
    path.write_text("back\n")
    assert source.current() == [b"back"]


def test_the_file_is_not_looked_at_more_often_than_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("one\n")
    source = TokenSource(Settings(auth_tokens_file=path), check_interval_s=3600)
    path.write_text("two\n")
    assert source.current() == [b"one"]


def test_the_reload_counter_is_exported_before_any_reload() -> None:
    """The dashboard's token-reload rate needs the series at 0 before the first re-read (as index swaps).
    A fresh process: the other tests here re-read files, which would create the series anyway."""
    script = "import app.metrics; from prometheus_client import generate_latest; print(generate_latest().decode())"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    text = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    for outcome in ("ok", "failed"):
        assert f'retriever_auth_token_reloads_total{{outcome="{outcome}"}} 0.0' in text
