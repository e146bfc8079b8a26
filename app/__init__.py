"""retriever: dense retrieval server with one shared FAISS index per node."""

__version__ = "0.1.0"
