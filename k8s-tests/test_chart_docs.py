"""The chart's values table and schema descriptions follow values.yaml's `# --` comments."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from chart_helpers import CHART, REPO

GENERATOR = [sys.executable, str(REPO / "tools" / "chart_docs.py")]


def chart_docs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GENERATOR, *args], capture_output=True, text=True, timeout=60, check=False)


def copy_chart(tmp_path: Path) -> Path:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    return chart


def test_values_table_and_schema_descriptions_are_up_to_date() -> None:
    result = chart_docs("--check")
    assert result.returncode == 0, f"run `make chart-docs`:\n{result.stdout[-4000:]}{result.stderr}"


def test_every_documented_value_is_a_table_row_and_a_schema_description() -> None:
    readme = (CHART / "README.md").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert '| `image.repository` | string | `"localhost:5000/retriever"` | Image repository.' in readme
    assert schema["properties"]["image"]["properties"]["tag"]["description"].startswith("Image tag")
    assert '| `index.initContainer.resources` | object | `{"requests":' in readme
    assert schema["properties"]["index"]["properties"]["sizeGiB"]["description"].startswith("Size of the FAISS index")


def test_a_changed_comment_makes_the_check_fail_until_regenerated(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("# -- Image pull policy.", "# -- How the kubelet pulls the image."))
    stale = chart_docs("--check", "--chart", str(chart))
    assert stale.returncode == 1
    assert "README.md, values.schema.json out of date" in stale.stderr
    assert '+| `image.pullPolicy` | string | `"IfNotPresent"` | How the kubelet pulls the image. |' in stale.stdout
    assert chart_docs("--chart", str(chart)).returncode == 0
    schema = json.loads((chart / "values.schema.json").read_text())
    pull_policy = schema["properties"]["image"]["properties"]["pullPolicy"]
    assert pull_policy["description"] == "How the kubelet pulls the image."
    # Idempotent: a second run finds nothing to change (others run it after every rebase).
    before = {name: (chart / name).read_text() for name in ("README.md", "values.schema.json")}
    assert chart_docs("--chart", str(chart)).stdout == ""
    assert before == {name: (chart / name).read_text() for name in ("README.md", "values.schema.json")}
    assert chart_docs("--check", "--chart", str(chart)).returncode == 0


def test_an_undocumented_value_is_an_error_naming_it(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "\nnewThing:\n  enabled: false\n")
    result = chart_docs("--check", "--chart", str(chart))
    assert result.returncode == 2
    assert "no `# --` comment on newThing.enabled" in result.stderr


def test_a_multi_line_comment_is_one_description(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "\n# -- First line,\n# second line.\nnewThing: 3\n")
    assert chart_docs("--chart", str(chart)).returncode == 0
    assert "| `newThing` | int | `3` | First line, second line. |" in (chart / "README.md").read_text()
