"""The one reader of /proc: memory, CPU and the process tree of a PID (Linux).

The server's own metrics read themselves through it (`rollup("self")`), and so do the dev harness,
the benchmarks and the tests when they look at a server from outside. PSS (proportional set size)
divides each resident page by the number of processes mapping it, so PSS summed over processes
counts a page shared by N workers once: the figure that tells "one copy of the index per node" from
"one copy per worker".
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROLLUP_KEYS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Private_Clean", "Private_Dirty", "Swap")
Pid = int | str  # a PID, or "self"


def _proc(pid: Pid, name: str) -> Path:
    return Path(f"/proc/{pid}/{name}")


def _stat_fields(pid: Pid) -> list[str]:
    """/proc/PID/stat from the state field on: comm may hold spaces and parentheses, so split after the last ')'."""
    stat = _proc(pid, "stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def parent_of(pid: int) -> int | None:
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, ValueError, IndexError):
        return None


def is_zombie(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] == "Z"
    except (OSError, ValueError, IndexError):
        return False


def exists(pid: int) -> bool:
    return _proc(pid, "").exists()


def process_tree(root: int) -> dict[int, int]:
    """Every live process below `root` (children, grandchildren, ...) mapped to its parent."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = parent_of(int(entry))
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
        raw = _proc(pid, "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def rollup(pid: Pid = "self") -> dict[str, int]:
    """Totals from /proc/PID/smaps_rollup (ROLLUP_KEYS), in bytes; raises OSError when the process is gone."""
    values: dict[str, int] = {}
    for line in _proc(pid, "smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ROLLUP_KEYS:
            values[key] = int(rest.split()[0]) * 1024
    return values


def status_bytes(pid: Pid, key: str) -> int | None:
    """A size from /proc/PID/status (VmRSS, VmHWM, ...) in bytes; None when absent or the process is gone."""
    try:
        for line in _proc(pid, "status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: Pid) -> float | None:
    """User + system CPU time of a process (all its threads) so far; None when it is gone."""
    try:
        fields = _stat_fields(pid)
    except (OSError, ValueError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def tree_cpu_seconds(root: int) -> float | None:
    """CPU seconds of `root` plus its descendants (uvicorn workers); None when `root` is gone."""
    own = cpu_seconds(root)
    if own is None:
        return None
    return own + sum(cpu_seconds(pid) or 0.0 for pid in descendants(root))


def rss(pid: Pid) -> int | None:
    """Resident bytes (from /proc/PID/statm: cheap); None when the process is gone."""
    try:
        return int(_proc(pid, "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def tree_rss(root: int) -> int:
    """Cheap total RSS of `root` and its descendants (0 when all are gone), e.g. for a memory watchdog."""
    return sum(rss(pid) or 0 for pid in [root, *descendants(root)])


def maps_file(pid: Pid, path: Path) -> bool:
    """True when the process holds a mapping of `path` (/proc/PID/maps)."""
    target = str(path.resolve())
    try:
        with open(_proc(pid, "maps")) as maps:
            return any(line.rstrip("\n").endswith(target) for line in maps)
    except OSError:
        return False


def file_mappings(pid: Pid, paths: set[str]) -> dict[str, dict[str, int]]:
    """Rss and Pss (bytes) of every mapping of the given files in /proc/PID/smaps, summed per file."""
    found: dict[str, dict[str, int]] = {}
    current: dict[str, int] | None = None
    with open(_proc(pid, "smaps")) as smaps:
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


def meminfo(key: str) -> int:
    """A line of /proc/meminfo (MemTotal, MemAvailable, ...) in bytes; 0 when absent."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def mem_available() -> int:
    return meminfo("MemAvailable")


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
