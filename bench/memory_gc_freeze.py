"""Why workers call gc.freeze(): what one full garbage collection costs a forked worker.

Workers are forked from a fork server that imported the heavy libraries (app.server.PRELOAD_MODULES),
so they share those pages copy-on-write. A full collection writes to the header of every tracked
object it scans, which copies the page holding it. This starts a fork server with the same preload,
forks workers with and without gc.freeze(), runs gc.collect() in each, and prints the private dirty
memory (/proc/self/smaps_rollup) before and after.

    .venv/bin/python bench/memory_gc_freeze.py
"""

from __future__ import annotations

import gc
import multiprocessing
import sys

from app import procstat

MIB = 1024**2


def private_dirty() -> int:
    return procstat.rollup("self").get("Private_Dirty", 0)


def worker(freeze: bool, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    if freeze:
        gc.freeze()
    before = private_dirty()
    gc.collect()
    results.put((freeze, before, private_dirty()))


def main() -> int:
    from app.server import PRELOAD_MODULES

    multiprocessing.set_forkserver_preload(list(PRELOAD_MODULES))
    context = multiprocessing.get_context("forkserver")
    results = context.Queue()
    print(f"fork server preloads: {', '.join(PRELOAD_MODULES)}")
    for freeze in (False, True, False, True):
        process = context.Process(target=worker, args=(freeze, results))
        process.start()
        flag, before, after = results.get(timeout=300)
        process.join(timeout=60)
        print(
            f"gc.freeze() {'yes' if flag else 'no '}: private dirty {before / MIB:6.1f} MiB -> "
            f"{after / MIB:6.1f} MiB after gc.collect() ({(after - before) / MIB:+.1f} MiB copied)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
