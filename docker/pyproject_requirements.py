"""Print the runtime requirements that pyproject.toml declares (plus the given extras), one per line.

Used by the Dockerfile to install the dependencies in a layer of their own (cached until
pyproject.toml or constraints.txt change) and by `make wheelhouse` to download them.

    python3 docker/pyproject_requirements.py [--without NAME ...] pyproject.toml [EXTRA ...]

`--without NAME` leaves a dependency out (the index-only image: `--without sentence-transformers`).
"""

import re
import sys

import tomllib


def _name(requirement: str) -> str:
    """The distribution name of a requirement line, normalised (PEP 503)."""
    name = re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv: list[str]) -> int:
    without: set[str] = set()
    while len(argv) > 2 and argv[1] == "--without":
        without.add(_name(argv[2]))
        argv = [argv[0], *argv[3:]]
    path, extras = argv[1], argv[2:]
    with open(path, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            print(f"unknown extra {extra!r}; known: {sorted(optional)}", file=sys.stderr)
            return 2
        reqs += optional[extra]
    print("\n".join(req for req in reqs if _name(req) not in without))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
