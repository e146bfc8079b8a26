"""retriever: dense retrieval server with one shared FAISS index per node."""

import os

# OpenMP threads (torch, FAISS and its OpenBLAS) sleep at barriers instead of spinning. Set before
# torch or faiss is loaded (the runtime reads it once). On a busy or CPU-limited node, spinning
# threads take the CPU the thread they wait for needs: measured on 2 shared cores, FAISS Flat search
# ran 10x-30x slower and a one-query encode 15x slower with the default (see bench/README.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
