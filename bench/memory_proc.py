"""Memory of a process tree from /proc: PSS and RSS per process, and the PSS of chosen file mappings.

PSS (proportional set size) divides each resident page by the number of processes mapping it, so
summing PSS over processes counts a page shared by N workers once. That is the figure that tells
"one copy of the index per node" from "one copy per worker".
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROLLUP_KEYS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Private_Clean", "Private_Dirty", "Swap")


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1])


def process_tree(root: int) -> dict[int, int]:
    """Every live process below `root` (children, grandchildren, ...) mapped to its parent."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent_of(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found: dict[int, int] = {}
    frontier = [root]
    for _ in range(64):  # depth bound: a process tree is never this deep
        if not frontier:
            break
        for pid in frontier:
            for child in children.get(pid, []):
                found[child] = pid
        frontier = [child for pid in frontier for child in children.get(pid, [])]
    return found


def descendants(root: int) -> list[int]:
    return list(process_tree(root))


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def rollup(pid: int) -> dict[str, int]:
    """Totals from /proc/PID/smaps_rollup, in bytes."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ROLLUP_KEYS:
            values[key] = int(rest.split()[0]) * 1024
    return values


def file_mappings(pid: int, paths: set[str]) -> dict[str, dict[str, int]]:
    """Rss and Pss (bytes) of every mapping of the given files in /proc/PID/smaps, summed per file."""
    found: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split(None, 5)
            if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:
                path = head[5].strip() if len(head) == 6 else ""
                current = found.setdefault(path, {"Rss": 0, "Pss": 0}) if path in paths else None
                continue
            if current is not None:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    current[key] += int(rest.split()[0]) * 1024
    return found


@dataclass
class ProcessMemory:
    pid: int
    role: str
    rss_bytes: int
    pss_bytes: int
    pss_anon_bytes: int
    pss_file_bytes: int
    mapped_pss_bytes: int
    mapped_rss_bytes: int
    mappings: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class TreeMemory:
    processes: list[ProcessMemory]

    @property
    def pss_total(self) -> int:
        return sum(p.pss_bytes for p in self.processes)

    @property
    def rss_total(self) -> int:
        return sum(p.rss_bytes for p in self.processes)

    @property
    def mapped_pss_total(self) -> int:
        return sum(p.mapped_pss_bytes for p in self.processes)

    def as_list(self) -> list[dict[str, object]]:
        return [asdict(p) for p in self.processes]


def role(pid: int, root: int, parent: int | None) -> str:
    """server (root: the supervisor, or the only worker), worker, forkserver, resource_tracker, other.

    Workers forked from a multiprocessing fork server carry its command line: they are told
    apart by their parent (the fork server is the root's child, workers are its children).
    """
    if pid == root:
        return "server"
    cmd = command_line(pid)
    if "multiprocessing.resource_tracker" in cmd:
        return "resource_tracker"
    if "multiprocessing.forkserver" in cmd:
        return "forkserver" if parent == root else "worker"
    if "multiprocessing.spawn" in cmd:
        return "worker"
    return "other"


def tree_memory(root: int, mapped_files: list[Path]) -> TreeMemory:
    """Memory of `root` and all its descendants; processes that exit meanwhile are skipped."""
    paths = {str(p.resolve()) for p in mapped_files}
    processes: list[ProcessMemory] = []
    tree = process_tree(root)
    for pid in [root, *tree]:
        try:
            totals = rollup(pid)
            mappings = file_mappings(pid, paths)
        except (OSError, ValueError):
            continue
        processes.append(
            ProcessMemory(
                pid=pid,
                role=role(pid, root, tree.get(pid)),
                rss_bytes=totals.get("Rss", 0),
                pss_bytes=totals.get("Pss", 0),
                pss_anon_bytes=totals.get("Pss_Anon", 0),
                pss_file_bytes=totals.get("Pss_File", 0),
                mapped_pss_bytes=sum(m["Pss"] for m in mappings.values()),
                mapped_rss_bytes=sum(m["Rss"] for m in mappings.values()),
                mappings=mappings,
            )
        )
    return TreeMemory(processes)


def tree_rss(root: int) -> int:
    """Cheap total RSS of a tree (from /proc/PID/statm), for a memory watchdog."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in [root, *descendants(root)]:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0
