"""The CLI turns the environment's refusals (an unwritable volume, a full disk) into one clear line."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from app.cli import EXIT_DATA, _describe_os_error, main


def test_an_os_refusal_is_one_line_naming_the_path_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = main(["demo-corpus", str(blocker / "corpus.jsonl"), "--limit", "1"])
    err = capsys.readouterr().err
    assert code == EXIT_DATA
    assert err.startswith(f"retriever: error: {blocker}/") and "Not a directory" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_permission_refusal_names_the_uid_and_the_kubernetes_fix() -> None:
    text = _describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/data/index/.wiki-18.downloads"))
    assert text.startswith("/data/index/.wiki-18.downloads: Permission denied")
    assert "uid" in text and "fsGroup" in text
    full = _describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/data/index/x"))
    assert "volume is full" in full
