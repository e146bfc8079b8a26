"""Benchmarks of retriever: `make bench`, `make bench-ann` (see bench/README.md)."""

# Imported first so that its OpenMP settings (OMP_WAIT_POLICY) are in place before any benchmark
# module loads torch or FAISS, exactly as in the server.
import app  # noqa: F401
