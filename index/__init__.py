"""Retrieval over user histories: session documents, the offline MiniLM embedder, the chromadb store.

Nothing here knows about LLMs; ``tools/`` calls :class:`index.store.SessionIndex`.
"""

from shopsight import refuse_top_level_import  # noqa: E402

refuse_top_level_import(__name__)
