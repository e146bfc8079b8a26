"""The load client behind `retriever load`: not part of the server (it imports nothing from it).

It drives any deployment over HTTP and reports throughput and latency; the tests and benchmarks
use it as a library (`run(run_load(...))`, `run(run_open_loop(...))`). See `generator`.
"""

from app.loadclient.generator import Answer, HttpError, LoadResult, main, run, run_load, run_open_loop

__all__ = ["Answer", "HttpError", "LoadResult", "main", "run", "run_load", "run_open_loop"]
