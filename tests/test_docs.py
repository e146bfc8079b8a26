"""The README's configuration table lists every setting, so documentation cannot drift silently."""

from pathlib import Path

from app.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_documents_every_setting() -> None:
    text = README.read_text()
    missing = [name for name in Settings.model_fields if f"`RETRIEVER_{name.upper()}`" not in text]
    assert not missing, f"settings missing from README's configuration table: {missing}"


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text
