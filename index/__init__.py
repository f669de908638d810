"""Retrieval over user histories: session documents, the offline MiniLM embedder, the chromadb store.

Nothing here knows about LLMs; ``tools/`` calls :class:`index.store.SessionIndex`.
"""
