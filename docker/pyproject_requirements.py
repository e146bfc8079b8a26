"""Print the runtime requirements that pyproject.toml declares (plus the given extras), one per line.

Used by the Dockerfile to install the dependencies in a layer of their own (cached until
pyproject.toml or constraints.txt change) and by `make wheelhouse` to download them.

    python3 docker/pyproject_requirements.py pyproject.toml [EXTRA ...]
"""

import sys

import tomllib


def main(argv: list[str]) -> int:
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
    print("\n".join(reqs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
