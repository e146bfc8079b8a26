"""Generate the chart's values documentation from the `# --` comments in values.yaml.

    python tools/chart_docs.py            # rewrite helm/retriever/README.md's table + schema descriptions
    python tools/chart_docs.py --check    # exit 1 (with a diff) when either is out of date

The comment convention is helm-docs': `# -- text` directly above a key documents it, and plain `#`
lines right after it continue the text. A comment on a mapping documents the whole mapping (its
children are then shown as its default). Every value must be documented, itself or through a
documented parent; an undocumented one is an error, so a new value cannot slip in without a line.

Two outputs, both idempotent (running twice changes nothing):
- the values table (key, type, default, description) between the markers
  `<!-- values-table:start -->` and `<!-- values-table:end -->` in the chart README;
- `description` of the matching node of values.schema.json (nodes without a `# --` keep theirs).

helm-docs is a Go binary (not on PyPI or npm) and Bitnami's readme-generator reads another
comment syntax (`## @param`), hence this small script.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "helm" / "retriever"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+|\"[^\"]+\"|'[^']+'):(?:\s|$)")
DOC_START = re.compile(r"^ *# -- ?(?P<text>.*)$")
DOC_MORE = re.compile(r"^ *#(?: (?P<text>.*))?$")
LIST_ITEM = re.compile(r"^ *- ")


class ChartDocsError(Exception):
    """values.yaml cannot be documented as it is (an undocumented value, a comment with no key)."""


@dataclass
class Documented:
    path: tuple[str, ...]
    description: str

    @property
    def key(self) -> str:
        return ".".join(self.path)


def parse_comments(text: str) -> list[Documented]:
    """Keys of values.yaml (as paths) with the `# --` text right above them, in file order.

    Keys inside lists are not addressed (a list is documented as one value)."""
    documented: list[Documented] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings that enclose the current line
    pending: list[str] | None = None
    in_list_indent: int | None = None
    for line in text.splitlines():
        if not line.strip():
            pending = None
            continue
        if start := DOC_START.match(line):
            pending = [start["text"].strip()]
            continue
        if line.lstrip().startswith("#"):
            more = DOC_MORE.match(line)
            if pending is not None and more is not None:
                pending.append((more["text"] or "").strip())
            continue
        indent = len(line) - len(line.lstrip(" "))
        if in_list_indent is not None and indent > in_list_indent:
            continue  # inside a list's items
        in_list_indent = None
        if LIST_ITEM.match(line):
            in_list_indent = indent - 1
            continue
        key_match = KEY_LINE.match(line)
        if key_match is None:
            continue  # continuation of a multi-line scalar
        key = key_match["key"].strip("\"'")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*[k for _, k in stack], key)
        if pending is not None:
            documented.append(Documented(path, " ".join(part for part in pending if part)))
            pending = None
        stack.append((indent, key))
    return documented


def leaves(values: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every value that is not a non-empty mapping."""
    if isinstance(values, dict) and values:
        return [leaf for key, child in values.items() for leaf in leaves(child, (*path, str(key)))]
    return [path]


def lookup(values: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        values = values[key]
    return values


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(values: dict[str, Any], documented: list[Documented]) -> str:
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for doc in documented:
        value = lookup(values, doc.path)
        compact = (",", ":") if isinstance(value, dict | list) else None
        default = json.dumps(value, ensure_ascii=False, separators=compact)
        rows.append(f"| `{doc.key}` | {type_name(value)} | `{cell(default)}` | {cell(doc.description)} |")
    return "\n".join(rows)


def schema_node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for key in path:
        if node is None:
            return None
        node = node.get("properties", {}).get(key)
    return node


def render(chart: Path) -> tuple[str, str]:
    """(README text, values.schema.json text) as they should be."""
    values_text = (chart / "values.yaml").read_text()
    values = yaml.safe_load(values_text)
    documented = parse_comments(values_text)
    known = {doc.path for doc in documented}
    for doc in documented:
        try:
            lookup(values, doc.path)
        except (KeyError, TypeError):
            message = f"values.yaml: a `# --` comment names {doc.key}, which the YAML does not hold"
            raise ChartDocsError(message) from None
    undocumented = [
        ".".join(leaf) for leaf in leaves(values) if not any(leaf[:n] in known for n in range(1, len(leaf) + 1))
    ]
    if undocumented:
        raise ChartDocsError(
            "values.yaml: no `# --` comment on " + ", ".join(undocumented) + " (document them, or a parent mapping)"
        )

    readme = (chart / "README.md").read_text()
    if START not in readme or END not in readme:
        raise ChartDocsError(f"{chart / 'README.md'}: the markers {START} and {END} are missing")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    new_readme = f"{head}{START}\n{table(values, documented)}\n{END}{tail}"

    schema = json.loads((chart / "values.schema.json").read_text())
    for doc in documented:
        node = schema_node(schema, doc.path)
        if node is not None:
            node["description"] = doc.description
    new_schema = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return new_readme, new_schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail (exit 1, with a diff) instead of writing")
    parser.add_argument("--chart", type=Path, default=CHART, help=f"chart directory (default: {CHART})")
    args = parser.parse_args(argv)
    try:
        outputs = dict(zip(("README.md", "values.schema.json"), render(args.chart), strict=True))
    except ChartDocsError as exc:
        print(f"chart_docs: error: {exc}", file=sys.stderr)
        return 2
    stale = []
    for name, text in outputs.items():
        path = args.chart / name
        current = path.read_text()
        if current == text:
            continue
        stale.append(name)
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True), name, name))
        else:
            path.write_text(text)
            print(f"updated {path}")
    if args.check and stale:
        print(f"chart_docs: {', '.join(stale)} out of date with values.yaml: run `make chart-docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
