"""Shared pieces of the intent, churn and risk models: behaviour "sentences", the torch net, training, calibration.

STATUS: ready — the API below is stable (additive changes only).

- ``fit_vocab`` / ``tokenize_events``: a user's (or session's) events as a sequence of tokens, one
  token = event x category x time-gap bucket x price bucket; the vocabulary is a JSON-able dict
  stored in the model's feature spec so inference tokenizes exactly as training did.
- ``TabularScaler``: signed-log + standardisation of tabular features, JSON-able.
- ``SequenceTabularNet``: embedding + GRU over tokens, MLP over tabular features, -> logits.
  Pass ``token_dims=vocab["dims"]`` to ``build_net`` so a token's embedding is the sum of its
  event / category / gap / price part embeddings (generalises from little data).
- ``fit_binary``: seeded training with early stopping on a validation slice and a Platt
  (temperature + bias) calibration fitted on that slice. By default the net starts as logistic
  regression on the tabular features (``TrainSettings.warm_start_linear``), so early stopping
  can only keep what the sequence and interactions add on validation. Validate on users held
  out of training: stacked snapshots a week apart are near-copies of each other (see
  ``churn.split_snapshots``).
- ``ablation_factors``: the top factors of one prediction (feature ablation), for ``explain``;
  ``ablation_batch`` / ``ablation_factors_from`` split it so its rows share a pass with the reasons'.
- ``BehaviorModel.glossary`` / ``typical_``: the words for every feature and rule (``glossary.py``) and
  the population's typical values (saved in the card) that ``reasons.py`` turns into sentences.
- ``BehaviorModel``: the interface every model shares (sklearn style). ``fit`` only learns;
  ``evaluation.evaluate`` writes the model card and ``evaluation.score_users`` the score table.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from shopsight.behavior.models import registry
from shopsight.behavior.models.glossary import (
    Glossary,
    Term,
    show_count,
    typical_from_card,
    typical_record,
)
from shopsight.behavior.models.registry import SPEC_SCHEMA_VERSION, ModelError  # noqa: F401  (re-exported: the stable API)

PAD = 0
# Time since the previous event of the same sequence, in seconds; bucket 0 = first event.
GAP_EDGES_SECONDS: tuple[float, ...] = (60, 30 * 60, 86400, 7 * 86400, 30 * 86400)
N_PRICE_BUCKETS = 5  # price quantile buckets, plus one for "no price"

Progress = Callable[[str, float], None]
"""A progress callback: ``progress(stage, fraction_done)``; fraction in [0, 1]."""


class NotFittedError(ModelError):
    """``predict_proba``/``explain``/``save`` called before ``fit`` or ``load``."""


@dataclass
class TrainSettings:
    """Training knobs shared by the torch models (passed down; never read from globals)."""

    seed: int = 0
    threads: int = 1  # one thread is fastest when other processes share the 2 cores (measured 6x)
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 4
    max_len: int = 64
    emb_dim: int = 32
    hidden: int = 48
    dropout: float = 0.2
    max_seconds: float = 150.0  # stop early rather than blow the 3-minute training budget
    warm_start_linear: bool = True  # start from logistic regression on the tabular features

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed numpy and torch; set torch's CPU thread count (a setting, because the machine is shared)."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(int(threads))


# --- behaviour sentences ------------------------------------------------------------------


PRICE_QUANTILES: tuple[float, ...] = tuple(np.linspace(0, 1, N_PRICE_BUCKETS + 1)[1:-1])


def fit_vocab(events: pd.DataFrame, *, max_categories: int = 30) -> dict[str, Any]:
    """Learn the token vocabulary from (training) events: event types, top categories, price edges.

    Categories beyond the ``max_categories`` most frequent share one "other" bucket; a missing
    category has its own bucket. Price edges are quantiles of the observed prices.
    """
    prices = pd.to_numeric(events["price"], errors="coerce").dropna()
    qs = np.quantile(prices.to_numpy(dtype="float64"), PRICE_QUANTILES).tolist() if len(prices) else []
    return vocab_from(events["event"].dropna().astype(str), events["category"].dropna().astype(str).value_counts(), qs,
                      max_categories=max_categories)


def vocab_from(event_types: Any, category_counts: pd.Series, price_quantiles: Sequence[float], *, max_categories: int = 30) -> dict[str, Any]:
    """The vocabulary of ``fit_vocab`` from what it counts (Spark computes these three on a whole table).

    Args:
        event_types: the event types seen (any iterable of strings).
        category_counts: each category's event count, most frequent first (ties in order of first
            appearance: ``value_counts``' order).
        price_quantiles: the prices' quantiles at ``PRICE_QUANTILES`` (empty: no prices).
    """
    from shopsight.behavior.events import EVENT_TYPES

    extra = sorted(set(event_types) - set(EVENT_TYPES))
    categories = sorted(category_counts.index[:max_categories].astype(str).tolist())
    vocab = {
        "events": list(EVENT_TYPES) + extra,
        "categories": categories,
        "gap_edges_seconds": list(GAP_EDGES_SECONDS),
        "price_edges": sorted(set(float(q) for q in price_quantiles)),
    }
    vocab["size"] = vocab_size(vocab)
    vocab["dims"] = list(_dims(vocab))
    return vocab


def quantiles_from_counts(values: np.ndarray, counts: np.ndarray, qs: Sequence[float]) -> list[float]:
    """``np.quantile`` (linear) of the multiset where ``values[i]`` (sorted, distinct) occurs ``counts[i]`` times.

    The same floats as ``np.quantile`` over the expanded values (tested): the two order statistics
    around each virtual index are found from the cumulative counts, then numpy interpolates them.
    """
    values = np.asarray(values, dtype="float64")
    ends = np.cumsum(np.asarray(counts, dtype="int64"))  # the value at sorted position k is values[searchsorted(ends, k, right)]
    n = int(ends[-1]) if len(ends) else 0
    if n == 0:
        return []
    out = []
    for q in qs:
        index = (n - 1) * float(q)
        lo = int(np.floor(index))
        gamma = index - lo
        a = values[np.searchsorted(ends, lo, side="right")]
        b = values[np.searchsorted(ends, min(lo + 1, n - 1), side="right")]
        out.append(float(np.quantile(np.array([a, b]), gamma)))  # numpy's own interpolation of a and b
    return out


def _dims(vocab: dict[str, Any]) -> tuple[int, int, int, int]:
    n_ev = len(vocab["events"]) + 1  # + unknown event
    n_cat = len(vocab["categories"]) + 2  # + other, + missing
    n_gap = len(vocab["gap_edges_seconds"]) + 2  # + first event
    n_price = len(vocab["price_edges"]) + 2  # + missing price
    return n_ev, n_cat, n_gap, n_price


def vocab_size(vocab: dict[str, Any]) -> int:
    """Number of token ids including the padding id 0."""
    n_ev, n_cat, n_gap, n_price = _dims(vocab)
    return 1 + n_ev * n_cat * n_gap * n_price


def distinct_per_group(group: np.ndarray, values: pd.Series, n: int) -> np.ndarray:
    """How many distinct non-missing ``values`` each of ``n`` groups has (``group[i]`` owns
    ``values[i]``; -1: no group): a groupby nunique over integer group codes, as float64."""
    codes, uniques = pd.factorize(values)
    ok = (codes >= 0) & (group >= 0)
    if not ok.any():
        return np.zeros(n, dtype="float64")
    pairs = np.unique(group[ok].astype("int64") * len(uniques) + codes[ok])
    return np.bincount(pairs // len(uniques), minlength=n).astype("float64")


def _vocab_positions(values: pd.Series, vocab: list[str]) -> np.ndarray:
    """Per row: the position of ``str(value)`` in ``vocab``, -1 if absent or missing.

    Factorizes first and looks up the few distinct values, not every row: per-row string
    conversions cost more than the rest of tokenizing one user's events.
    """
    codes, uniques = pd.factorize(values)
    where = {v: i for i, v in enumerate(vocab)}  # a few dozen entries: cheaper than building an Index
    at = np.array([where.get(str(u), -1) for u in uniques] + [-1], dtype="int64")
    return at[codes]  # code -1 (missing) picks the trailing -1


def _sequence_order(events: pd.DataFrame, by: str) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    """(rows sorted by ``by`` then time, ties in input order, rows without a ``by`` value left
    out; each of those rows' code; the ``by`` values, sorted, that the codes index)."""
    codes, uniques = pd.factorize(events[by], sort=True)
    ts = events["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")
    rows = np.flatnonzero(codes >= 0)
    rows = rows[np.lexsort((ts[rows], codes[rows]))]  # lexsort is stable
    return rows, codes[rows], pd.Index(uniques, name=by)


def _tokens(events: pd.DataFrame, vocab: dict[str, Any], rows: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Token ids (>= 1) of ``rows`` of ``events``, in that order (``_sequence_order``: ``codes``
    are each row's sequence, equal codes contiguous). The time-gap part of a token is the gap
    to the previous event of the same sequence; the first event has its own bucket."""
    n_ev, n_cat, n_gap, n_price = _dims(vocab)
    ev = _vocab_positions(events["event"], vocab["events"])[rows]
    ev[ev < 0] = n_ev - 1  # unknown (or missing) event
    cat = _vocab_positions(events["category"], vocab["categories"])[rows]
    cat[cat < 0] = n_cat - 2  # other
    cat[events["category"].isna().to_numpy(dtype=bool)[rows]] = n_cat - 1
    ts = events["ts"].to_numpy(dtype="datetime64[ns]").astype("int64")[rows]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = codes[1:] != codes[:-1]
    gap_s = np.zeros(len(rows))
    gap_s[1:] = (ts[1:] - ts[:-1]) / 1e9  # what .diff().dt.total_seconds() gives
    gap = np.searchsorted(np.asarray(vocab["gap_edges_seconds"], dtype="float64"), gap_s, side="right") + 1
    gap[first] = 0
    price = pd.to_numeric(events["price"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)[rows]
    pb = np.searchsorted(np.asarray(vocab["price_edges"], dtype="float64"), np.nan_to_num(price), side="right")
    pb[np.isnan(price)] = n_price - 1
    return 1 + ((ev * n_cat + cat) * n_gap + gap) * n_price + pb


@dataclass
class Sequences:
    """Tokenized sequences: ``tokens[i, :lengths[i]]`` are the last events of ``keys[i]``, oldest first."""

    tokens: np.ndarray  # int64 [n, max_len], right-padded with 0
    lengths: np.ndarray  # int64 [n], >= 1 (an empty sequence is one padding token)
    keys: pd.Index


def tokenize_events(
    events: pd.DataFrame,
    vocab: dict[str, Any],
    *,
    by: str = "user_id",
    max_len: int = 64,
    keys: Sequence[Any] | pd.Index | None = None,
) -> Sequences:
    """Turn events into one token sequence per ``by`` value (user or session), the most recent ``max_len``.

    Args:
        events: canonical events (any order); only the rows you want the model to see. Rows
            without a ``by`` value are left out.
        vocab: from ``fit_vocab`` (stored in the model's spec).
        by: the column that groups events into sequences (``user_id`` or ``session_id``).
        max_len: keep this many most recent tokens per sequence.
        keys: the sequences to return, in this order; keys without events get an empty sequence.
            Default: every ``by`` value, sorted.

    Returns:
        ``Sequences`` with tokens [n, max_len] (oldest first, right-padded) and lengths.

    numpy over integer codes (no frame sort or groupby): it runs per request for one user.
    """
    rows, codes, values = _sequence_order(events, by)
    keys = pd.Index(values if keys is None else keys, name=by)
    out = np.zeros((len(keys), max_len), dtype="int64")
    lengths = np.ones(len(keys), dtype="int64")
    if len(rows):
        tok = _tokens(events, vocab, rows, codes)
        sizes = np.bincount(codes, minlength=len(values))
        starts = np.cumsum(sizes) - sizes
        from_end = starts[codes] + sizes[codes] - 1 - np.arange(len(rows))  # 0 = the most recent event
        keep = from_end < max_len
        n_kept = np.minimum(sizes, max_len)[codes]
        pos = (n_kept - 1 - from_end)[keep]
        row = keys.get_indexer(values)[codes[keep]]
        ok = row >= 0
        out[row[ok], pos[ok]] = tok[keep][ok]
        lengths[row[ok]] = n_kept[keep][ok]  # every kept row of a key carries the same count
    return Sequences(tokens=out, lengths=lengths, keys=keys)


# --- tabular features ---------------------------------------------------------------------


@dataclass
class TabularScaler:
    """``sign(x)·log1p(|x|)`` then standardise; missing values become 0 (the training mean)."""

    columns: list[str]
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, X: pd.DataFrame) -> "TabularScaler":
        Z = _signed_log(X.astype("float64").to_numpy())
        mean = np.nanmean(Z, axis=0)
        std = np.nanstd(Z, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > 1e-9), std, 1.0)
        return cls(columns=list(X.columns), mean=mean.tolist(), std=std.tolist())

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.columns if c not in X.columns]
        if missing:
            raise ModelError(f"features {missing} are missing; the model was trained with {self.columns}")
        Z = _signed_log(X[self.columns].to_numpy(dtype="float64", na_value=np.nan))
        Z = (Z - np.asarray(self.mean)) / np.asarray(self.std)
        return np.nan_to_num(Z, nan=0.0, posinf=0.0, neginf=0.0).astype("float32")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TabularScaler":
        return cls(columns=list(d["columns"]), mean=list(d["mean"]), std=list(d["std"]))


def _signed_log(Z: np.ndarray) -> np.ndarray:
    return np.sign(Z) * np.log1p(np.abs(Z))


# --- the net ------------------------------------------------------------------------------


class SequenceTabularNet(nn.Module):
    """Embedding + GRU over a behaviour sentence, concatenated with an MLP over tabular features.

    ``forward(tokens, lengths, x) -> logits`` with shape [batch] (``n_outputs == 1``) or
    [batch, n_outputs]. A linear skip from the tabular features keeps the net at least as good
    as logistic regression on them. ``vocab_size == 0`` drops the sequence branch.
    """

    def __init__(
        self,
        vocab_size: int,
        n_tabular: int,
        *,
        emb_dim: int = 32,
        hidden: int = 48,
        dropout: float = 0.1,
        n_outputs: int = 1,
        token_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.n_outputs = n_outputs
        self.use_sequence = vocab_size > 0
        seq_dim = 0
        if self.use_sequence:
            # With token_dims (event, category, gap, price sizes) a token's embedding is the sum of
            # one embedding per part: the parts are shared across tokens, so rare combinations
            # still get a sensible vector from little data.
            self.token_dims = list(token_dims) if token_dims else None
            if self.token_dims:
                self.part_embeds = nn.ModuleList(nn.Embedding(d, emb_dim) for d in self.token_dims)
            else:
                self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
            self.gru = nn.GRU(emb_dim, hidden, batch_first=True)
            seq_dim = hidden
        self.tab = nn.Sequential(nn.Linear(n_tabular, hidden), nn.ReLU(), nn.Dropout(dropout)) if n_tabular else None
        tab_dim = hidden if n_tabular else 0
        self.head = nn.Sequential(
            nn.Linear(seq_dim + tab_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_outputs)
        )
        self.skip = nn.Linear(n_tabular, n_outputs) if n_tabular else None

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] -> vectors [B, L, emb_dim]; padding (0) maps to zeros."""
        if not self.token_dims:
            return self.embed(tokens)
        rest = (tokens - 1).clamp(min=0)
        parts = []
        for d in reversed(self.token_dims):  # ids are ((ev * n_cat + cat) * n_gap + gap) * n_price + price
            parts.append(rest % d)
            rest = rest // d
        parts.reverse()
        emb = sum(e(p) for e, p in zip(self.part_embeds, parts))
        return emb * (tokens != PAD).unsqueeze(-1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.finish(encode_sentences(self.gru, self.embed_tokens(tokens), lengths) if self.use_sequence else None, x)

    def finish(self, h: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """The logits from the sentences' encoding ``h`` ([B or 1, hidden]; None without the sequence branch) and
        the tabular rows ``x``: the part of :meth:`forward` after the GRU."""
        parts = []
        if h is not None:
            # one sentence for a batch of tabular rows (feature ablation): encoded once, shared
            parts.append(h.expand(len(x), -1) if len(h) == 1 else h)
        if self.tab is not None:
            parts.append(self.tab(x))
        out = self.head(torch.cat(parts, dim=1))
        if self.skip is not None:
            out = out + self.skip(x)
        return out.squeeze(1) if self.n_outputs == 1 else out


def encode_sentences(gru: nn.GRU, emb: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The last layer's final hidden state [B, hidden] of ``gru`` over the embedded sentences ``emb`` [B, L, dim]."""
    packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
    _, h = gru(packed)
    return h[-1]


def net_config(net: SequenceTabularNet) -> dict[str, Any]:
    """Constructor arguments of ``net`` (stored in the spec to rebuild it at load time)."""
    return dict(net._config)  # type: ignore[attr-defined]


def build_net(config: dict[str, Any]) -> SequenceTabularNet:
    """Build a ``SequenceTabularNet`` from a config dict and remember the config for ``net_config``."""
    net = SequenceTabularNet(
        config["vocab_size"],
        config["n_tabular"],
        emb_dim=config.get("emb_dim", 32),
        hidden=config.get("hidden", 48),
        dropout=config.get("dropout", 0.1),
        n_outputs=config.get("n_outputs", 1),
        token_dims=config.get("token_dims"),
    )
    net._config = dict(config)  # type: ignore[attr-defined]
    return net


# --- training -----------------------------------------------------------------------------


@dataclass
class Calibration:
    """Platt scaling of logits: ``p = sigmoid(scale * logit + bias)`` (temperature = 1/scale)."""

    scale: float = 1.0
    bias: float = 0.0

    def apply(self, logits: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        return expit(self.scale * np.asarray(logits, dtype="float64") + self.bias)

    @classmethod
    def fit(cls, logits: np.ndarray, y: np.ndarray) -> "Calibration":
        """Fit scale and bias by minimising log loss on held-out logits (LBFGS on two numbers)."""
        z = torch.tensor(np.asarray(logits, dtype="float64"))
        t = torch.tensor(np.asarray(y, dtype="float64"))
        if len(np.unique(y)) < 2:
            return cls()
        params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([params], lr=0.5, max_iter=100)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(params[0] * z + params[1], t)
            # a weak pull towards the identity keeps a tiny or separable validation slice finite
            loss = loss + 1e-3 * ((params[0] - 1.0) ** 2 + params[1] ** 2)
            loss.backward()
            return loss

        opt.step(closure)
        scale, bias = (float(v) for v in params.detach())
        if not (math.isfinite(scale) and math.isfinite(bias)) or scale <= 0:
            return cls()
        scale = min(scale, 20.0)
        return cls(scale=scale, bias=bias)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class FitResult:
    """What ``fit_binary`` learned besides the weights (which are loaded into the net)."""

    best_epoch: int
    epochs_run: int
    seconds: float
    val_loss: float
    calibration: Calibration
    val_logits: np.ndarray = field(repr=False)
    history: list[dict[str, float]] = field(default_factory=list)


def _tensors(seqs: Sequences, X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.ascontiguousarray(seqs.tokens)),
        torch.from_numpy(np.ascontiguousarray(seqs.lengths)),
        torch.from_numpy(np.ascontiguousarray(X, dtype="float32")),
    )


def predict_logits(net: SequenceTabularNet, seqs: Sequences, X: np.ndarray, *, batch_size: int = 2048) -> np.ndarray:
    """Raw logits of ``net`` for every row (eval mode, no grad).

    ``seqs`` holds one sequence per row of ``X``, or a single sequence shared by every row:
    what feature ablation scores (one user's sentence beside many variants of their features),
    where encoding it once instead of once per row saves most of the GRU's time.
    """
    net.eval()
    tok, lens, x = _tensors(seqs, X)
    shared = len(tok) == 1
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            rows = slice(0, 1) if shared else slice(i, i + batch_size)
            outs.append(net(tok[rows], lens[rows], x[i : i + batch_size]).numpy())
    if not outs:
        return np.zeros((0,) if net.n_outputs == 1 else (0, net.n_outputs), dtype="float64")
    return np.concatenate(outs).astype("float64")


def _logistic_fit(X: np.ndarray, y: np.ndarray, *, seed: int) -> tuple[np.ndarray, float]:
    """Weights and intercept of an L2 logistic regression on already standardised features."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(X, y.astype("int64"))
    return lr.coef_.astype("float32")[0], float(lr.intercept_[0])


def warm_start(net: nn.Module, pos: float, linear: tuple[np.ndarray, float] | None = None) -> None:
    """Start at the base rate ``pos`` (faster, steadier convergence); with ``linear`` = (w, b), as
    logistic regression on the tabular features with the deep part silent: training then only has
    to find what the sequence and interactions add, and early stopping (which may keep epoch 0)
    never ends below the linear model on validation."""
    with torch.no_grad():
        last = net.head[-1]
        last.bias.fill_(math.log(max(pos, 1e-4) / max(1 - pos, 1e-4)))
        if linear is not None:
            w, b = linear
            net.skip.weight.copy_(torch.from_numpy(w).reshape(net.skip.weight.shape))
            net.skip.bias.fill_(b)
            last.weight.zero_()
            last.bias.zero_()


class BestEpoch:
    """Early stopping as both training loops (in memory, from shards) do it: the weights of the epoch
    with the lowest validation loss, a stop after ``patience`` epochs without a better one or past
    ``max_seconds``, and each epoch's losses in the history."""

    def __init__(self, net: nn.Module, settings: TrainSettings, first_val_loss: float = float("inf"),
                 progress: Progress | None = None) -> None:
        self.net, self.s, self.progress = net, settings, progress
        self.best = (first_val_loss, 0, {k: v.clone() for k, v in net.state_dict().items()})
        self.history: list[dict[str, float]] = []
        self.start = time.perf_counter()

    def stop_after(self, epoch: int, train_loss: float, val_loss: float) -> bool:
        """Record an epoch; True when training should stop."""
        self.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if self.progress:
            self.progress("train", epoch / self.s.epochs)
        if val_loss < self.best[0] - 1e-5:
            self.best = (val_loss, epoch, {k: v.clone() for k, v in self.net.state_dict().items()})
        elif epoch - self.best[1] >= self.s.patience:
            return True
        return time.perf_counter() - self.start > self.s.max_seconds

    def restore_best(self) -> None:
        self.net.load_state_dict(self.best[2])

    def result(self, epochs_run: int, calibration: "Calibration", val_logits: np.ndarray) -> FitResult:
        return FitResult(best_epoch=self.best[1], epochs_run=epochs_run, seconds=time.perf_counter() - self.start,
                         val_loss=self.best[0], calibration=calibration, val_logits=val_logits, history=self.history)


def fit_binary(
    net: SequenceTabularNet,
    seqs: Sequences,
    X: np.ndarray,
    y: np.ndarray,
    *,
    val_mask: np.ndarray | None = None,
    settings: TrainSettings | None = None,
    progress: Progress | None = None,
) -> FitResult:
    """Train ``net`` (single logit) with BCE, early-stop on the validation rows, then calibrate on them.

    Args:
        net: a fresh ``SequenceTabularNet`` with ``n_outputs == 1``.
        seqs: tokenized sequences, one row per training example, aligned with ``X`` and ``y``.
        X: standardised tabular features [n, n_tabular] (from ``TabularScaler``).
        y: 0/1 labels.
        val_mask: rows used for early stopping and calibration; they must be the most recent
            ones in time (e.g. the latest snapshot). Default: the last 20% of rows.
        settings: training knobs; seeds torch and sets the thread count.
        progress: optional ``progress(stage, fraction)`` callback, called once per epoch.

    Returns:
        ``FitResult``; the best epoch's weights are loaded into ``net``. The net's parameters
        are re-initialised from ``settings.seed`` first, so the same inputs give the same net.
    """
    s = settings or TrainSettings()
    seed_everything(s.seed, s.threads)
    # Re-initialise from the seed so the result does not depend on when the net was built.
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    y = np.asarray(y, dtype="float32")
    n = len(y)
    if val_mask is None:
        val_mask = np.zeros(n, dtype=bool)
        val_mask[int(n * 0.8) :] = True
    val_mask = np.asarray(val_mask, dtype=bool)
    if val_mask.all() or not val_mask.any():
        raise ModelError(f"need both training and validation rows; got {int(val_mask.sum())} validation of {n}")
    tok, lens, x = _tensors(seqs, X)
    yt = torch.from_numpy(y)
    tr = np.flatnonzero(~val_mask)
    va = np.flatnonzero(val_mask)
    pos = float(y[tr].mean()) if len(tr) else 0.5
    loss_fn = nn.BCEWithLogitsLoss()
    linear = s.warm_start_linear and net.skip is not None and net.n_outputs == 1 and len(np.unique(y[tr])) == 2
    warm_start(net, pos, _logistic_fit(X[tr], y[tr], seed=s.seed) if linear else None)
    opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(s.seed)
    first = float("inf")
    if s.warm_start_linear:
        net.eval()
        with torch.no_grad():
            vb = torch.from_numpy(va)
            first = float(loss_fn(net(tok[vb], lens[vb], x[vb]), yt[vb]))
    epochs = BestEpoch(net, s, first, progress)
    epoch = 0
    for epoch in range(1, s.epochs + 1):
        net.train()
        order = tr[torch.randperm(len(tr), generator=gen).numpy()]
        total = 0.0
        for i in range(0, len(order), s.batch_size):
            b = torch.from_numpy(order[i : i + s.batch_size])
            opt.zero_grad()
            loss = loss_fn(net(tok[b], lens[b], x[b]), yt[b])
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            total += float(loss.detach()) * len(b)
        net.eval()
        with torch.no_grad():
            vb = torch.from_numpy(va)
            val_loss = float(loss_fn(net(tok[vb], lens[vb], x[vb]), yt[vb]))
        if epochs.stop_after(epoch, total / max(len(tr), 1), val_loss):
            break
    epochs.restore_best()
    val_seqs = Sequences(seqs.tokens[va], seqs.lengths[va], seqs.keys[va] if len(seqs.keys) == n else pd.RangeIndex(len(va)))
    val_logits = predict_logits(net, val_seqs, X[va])
    calibration = Calibration.fit(val_logits, y[va])
    if progress:
        progress("train", 1.0)
    return epochs.result(epoch, calibration, val_logits)


# --- explanations -------------------------------------------------------------------------

SEQUENCE_FACTOR = "recent_event_sequence"


def _sequence_say(v: float | None, row: Any) -> str:
    if v is None:
        return "the pattern of their recent sessions (the order, timing, categories and prices of their latest events)"
    return f"the pattern of their recent sessions (the order, timing, categories and prices of their last {show_count(v)} events)"


# The behaviour sentence's glossary entry: the factor every sequence model names beside its tabular ones.
SEQUENCE_GLOSSARY = Glossary(terms={SEQUENCE_FACTOR: Term(
    "the pattern of their recent sessions (order, timing, categories and prices of their latest events)",
    "value = events read (at most the model's max_len); its effect is the change when the model reads no events at all",
    "sequence", _sequence_say,
)})


def ablation_factors(
    score: Callable[[np.ndarray], np.ndarray],
    x_scaled: np.ndarray,
    raw_values: dict[str, Any],
    names: Sequence[str],
    *,
    top_k: int = 5,
) -> list[dict[str, Any]]:
    """Top factors of one prediction by feature ablation.

    Each feature in turn is set to the training average (0 after ``TabularScaler``) and the
    probability recomputed; ``contribution`` = p(actual) − p(ablated): positive means the
    feature's value raises the probability.

    Args:
        score: maps a batch of scaled rows [k, n_features] to probabilities [k].
        x_scaled: the scaled row [n_features].
        raw_values: the unscaled value of each feature, reported as ``value``.
        names: feature names, aligned with ``x_scaled``.
        top_k: how many factors to return (largest absolute contribution first).
    """
    return ablation_factors_from(score(ablation_batch(x_scaled)), raw_values, names, top_k=top_k)


def ablation_batch(x_scaled: np.ndarray) -> np.ndarray:
    """The rows ``ablation_factors`` scores: the row itself, then each feature in turn at 0 (the training mean).

    Kept apart from the scoring so that a caller can score these rows in the same pass as
    others (the reasons' rows): each pass reads the user's sequence through the GRU again.
    """
    x_scaled = np.asarray(x_scaled, dtype="float32")
    batch = np.repeat(x_scaled[None, :], len(x_scaled) + 1, axis=0)
    batch[np.arange(1, len(x_scaled) + 1), np.arange(len(x_scaled))] = 0.0
    return batch


def ablation_factors_from(p: np.ndarray, raw_values: dict[str, Any], names: Sequence[str], *, top_k: int = 5) -> list[dict[str, Any]]:
    """``ablation_factors`` from the probabilities of ``ablation_batch``'s rows (the row first)."""
    base = float(p[0])
    factors = []
    for j, name in enumerate(names):
        c = base - float(p[j + 1])
        v = raw_values.get(name)
        if isinstance(v, (np.floating, float)):
            v = None if not np.isfinite(v) else round(float(v), 4)
        elif isinstance(v, np.integer):
            v = int(v)
        factors.append({"name": name, "value": v, "direction": "raises" if c >= 0 else "lowers", "contribution": round(c, 4)})
    factors.sort(key=lambda f: -abs(f["contribution"]))
    return factors[:top_k]


# --- the shared model interface -----------------------------------------------------------


class BehaviorModel:
    """The interface intent, churn and risk share (sklearn style).

    Hyperparameters live in ``__init__``; learned state in attributes ending in ``_``; ``fit``
    returns self and only learns: the test metrics beside the baselines (the model card) come
    from ``evaluation.evaluate``, every user's score from ``evaluation.score_users``. Subclasses
    set ``name`` and implement ``fit``, ``predict_proba``, ``explain``, ``_state`` (-> state_dict,
    spec) and ``_from_saved``.
    """

    name: ClassVar[str] = "model"
    version_: str | None = None
    # The population's typical value per feature (``glossary.typical_values`` at fit time), saved
    # in the card as ``typical_values``; empty for a model saved before they existed.
    typical_: dict[str, float] = {}
    typical_population: ClassVar[str] = "active customers"
    # Which reasons ``explain`` puts first (``reasons.order_reasons``), chosen per model by evals/mechanisms.py.
    reason_ordering: ClassVar[str] = "logit"

    def _check_fitted(self) -> None:
        if getattr(self, "net_", None) is None:
            raise NotFittedError(
                f"the {self.name} model is not fitted: call fit(events) or load it with "
                f"{type(self).__name__}.load(workspace) (train it with `shopsight train {self.name}`)"
            )

    def fit(self, events: pd.DataFrame, *, labels: pd.DataFrame | None = None, cutoff: pd.Timestamp | None = None, progress: Progress | None = None) -> "BehaviorModel":  # pragma: no cover - interface
        raise NotImplementedError

    def predict_proba(self, events: pd.DataFrame, user_ids: Sequence[str] | None = None) -> pd.Series:  # pragma: no cover - interface
        raise NotImplementedError

    def explain(self, events: pd.DataFrame, user_id: str) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def _from_saved(cls, state_dict: dict[str, torch.Tensor], spec: dict[str, Any]) -> "BehaviorModel":  # pragma: no cover - interface
        raise NotImplementedError

    def glossary(self) -> Glossary:  # pragma: no cover - interface
        """The words for every feature and rule this model can name (``glossary.Glossary``)."""
        raise NotImplementedError

    def typical_card(self) -> dict[str, Any]:
        """The card entries recording the typical values (``evaluate`` and ``save`` put them in the card)."""
        return {"typical_values": typical_record(self.typical_, self.typical_population, self.typical_definition())}

    def typical_definition(self) -> str:
        """Who ``typical_population`` is, exactly (the card says it beside the values)."""
        active = getattr(self, "active_days", None)
        return (f"users with an event in the {active} days before a training snapshot" if active
                else "every user seen before a training snapshot")

    def _read_card(self, card: dict[str, Any]) -> None:
        """Take what inference needs from a saved card: the typical values."""
        self.typical_ = typical_from_card(card)

    def baseline_row(self, scaler: "TabularScaler", typical: dict[str, float]) -> np.ndarray:
        """The scaled row of typical values: what a reason's features are set to for its ``without``.

        Features without a typical value get 0, the training mean of the scaled feature, which
        is what ``ablation_factors`` uses for every feature. Remembered per (scaler, typical)
        object pair: building it costs more than the rest of the reasons (a one-row frame).
        """
        memo = self.__dict__.setdefault("_baselines", {})
        hit = memo.get((id(scaler), id(typical)))
        if hit is None or hit[0] is not scaler or hit[1] is not typical:  # ids of replaced objects may be reused
            row = pd.DataFrame([[typical.get(c, np.nan) for c in scaler.columns]], columns=scaler.columns, dtype="float64")
            hit = memo[(id(scaler), id(typical))] = (scaler, typical, scaler.transform(row)[0])
        return hit[2]

    @property
    def label(self) -> str:
        """``"<name>@<version>"`` for citing in answers (``"<name>@unsaved"`` before ``save``)."""
        return f"{self.name}@{self.version_ or 'unsaved'}"

    def save(self, ws: Any, *, card: dict[str, Any] | None = None, scores: pd.DataFrame | None = None) -> str:
        """Save weights and spec as a new version in ``ws``, with the card and scores if given; returns the version.

        Args:
            ws: the workspace.
            card: the model card (``evaluation.evaluate(...).card``); default: none beyond what
                the registry records (name, version, created, weights checksum).
            scores: every user's scores (``evaluation.score_users``), saved as ``scores.parquet``.
        """
        self._check_fitted()
        state_dict, spec = self._state()
        card = {**self.typical_card(), **(card or {})}  # a card from ``evaluate`` has them already
        self.version_ = registry.save_model(ws, self.name, state_dict=state_dict, spec=spec, card=card, scores=scores)
        return self.version_

    @classmethod
    def load(cls, ws: Any, version: str | None = None) -> "BehaviorModel":
        """Load a saved version (default: the latest) from ``ws``."""
        saved = registry.load(ws, cls.name, version)
        try:
            model = cls._from_saved(saved.state_dict, saved.spec)
        except (KeyError, RuntimeError, TypeError) as exc:
            raise ModelError(
                f"{cls.name} model {saved.card.get('version')} in {ws.root} does not match this code ({exc}); "
                f"retrain it with `shopsight train {cls.name}`"
            ) from exc
        model.version_ = saved.card.get("version")
        model._read_card(saved.card)
        return model


def user_evidence(events: pd.DataFrame, user_id: str, *, n_sessions: int = 3) -> list[dict[str, Any]]:
    """The user's most recent sessions (and the last purchase session) as evidence rows for ``explain``.

    Plain numpy/Python over the user's rows: it runs once per explained user, where each pandas
    groupby and filter cost more than the whole computation.
    """
    mine = events[events["user_id"] == user_id]
    if mine.empty:
        return []
    sid = mine["session_id"].astype(object).to_numpy()
    event = mine["event"].astype(object).to_numpy()
    category = mine["category"].astype(object).to_numpy()
    ts = mine["ts"]
    ts_ns = ts.to_numpy(dtype="datetime64[ns]").astype("int64")
    codes, sessions = pd.factorize(sid, sort=False)
    start = np.full(len(sessions), np.iinfo("int64").max)
    np.minimum.at(start, codes, ts_ns)
    # sessions by start time (stable: ties keep first-appearance order, as sort_values does)
    recent = [sessions[i] for i in np.argsort(start, kind="stable")[-n_sessions:]]
    buys = np.flatnonzero(event == "purchase")
    if len(buys):
        last_buy = sid[buys[np.argsort(ts_ns[buys], kind="stable")[-1]]]
        if last_buy not in recent:
            recent.insert(0, last_buy)
    out = []
    for s in recent:
        rows = np.flatnonzero(sid == s)
        counts: dict[str, int] = {}
        for e in event[rows]:
            if e is not None and e is not pd.NA:
                counts[e] = counts.get(e, 0) + 1
        # value_counts' order: most frequent first, ties in order of first appearance
        ordered = sorted(counts.items(), key=lambda kv: -kv[1])
        cats = sorted({str(c) for c in category[rows] if not pd.isna(c)})[:3]
        detail = ", ".join(f"{int(v)} {k}" for k, v in ordered)
        if cats:
            detail += f" in {', '.join(cats)}"
        top_event = "purchase" if "purchase" in counts else str(ordered[0][0])
        out.append({"session_id": str(s), "ts": ts.iloc[int(rows[np.argmin(ts_ns[rows])])].isoformat(), "event": top_event,
                    "detail": detail, "events": {str(k): int(v) for k, v in ordered}, "categories": cats})
    return out
