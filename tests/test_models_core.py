"""The shared model core: metrics, behaviour sentences, the net's training and calibration, the registry."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from shopsight.behavior.models import registry
from shopsight.behavior.models.common import (
    Calibration,
    ModelError,
    Sequences,
    TrainSettings,
    build_net,
    fit_binary,
    fit_vocab,
    predict_logits,
    tokenize_events,
)
from shopsight.behavior.models.metrics import best_f1_threshold, binary_report, expected_calibration_error


# --- metrics --------------------------------------------------------------------------------


def test_binary_report_matches_a_hand_computed_example():
    y = [0, 0, 1, 1]
    p = [0.1, 0.4, 0.35, 0.8]

    r = binary_report(y, p, threshold=0.5)

    assert r["roc_auc"] == pytest.approx(0.75)
    assert r["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert r["brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    assert r["ece"] == pytest.approx(0.25 * (0.1 + 0.4 + 0.65 + 0.2))
    assert (r["precision"], r["recall"]) == (1.0, 0.5)
    assert r["f1"] == pytest.approx(2 / 3)
    assert (r["base_rate"], r["n"], r["threshold_source"]) == (0.5, 4, "given")


def test_best_f1_threshold_keeps_tied_scores_together():
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.7, 0.7, 0.3, 0.2, 0.1])
    thr = best_f1_threshold(y, p)
    # cutting at 0.9 gives F1 0.5; at 0.7 (both tied rows) 2/3; at 0.2 0.75 (best)
    assert thr == pytest.approx(0.2)
    assert binary_report(y, p)["f1"] == pytest.approx(0.75)


def test_single_class_labels_give_no_auc_rather_than_a_crash():
    r = binary_report([0, 0, 0], [0.1, 0.2, 0.3], threshold=0.5)
    assert r["roc_auc"] is None and r["pr_auc"] is None
    assert expected_calibration_error(np.zeros(3), np.array([0.0, 0.0, 0.0])) == 0.0


# --- behaviour sentences ----------------------------------------------------------------------


def _events() -> pd.DataFrame:
    t0 = pd.Timestamp("2024-03-01 10:00", tz="UTC")
    rows = [
        ("a", 0, "view", "shoes", 20.0),
        ("a", 30, "add_to_cart", "shoes", 20.0),  # 30 s later
        ("a", 3 * 86400, "purchase", "shoes", 20.0),  # 3 days later
        ("b", 100, "view", None, None),
        ("b", 200, "search", "rare", 500.0),
        ("b", 260, "view", "hats", 5.0),
    ]
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "ts": [t0 + pd.Timedelta(seconds=r[1]) for r in rows],
            "event": [r[2] for r in rows],
            "category": pd.array([r[3] for r in rows], dtype="string"),
            "price": [r[4] for r in rows],
            "session_id": ["s1", "s1", "s2", "s3", "s3", "s3"],
        }
    )


def test_tokens_keep_the_most_recent_events_in_time_order_and_pad_unknown_users():
    ev = _events()
    vocab = fit_vocab(ev, max_categories=2)
    seqs = tokenize_events(ev, vocab, max_len=2, keys=["a", "b", "nobody"])

    assert seqs.tokens.shape == (3, 2)
    assert seqs.lengths.tolist() == [2, 2, 1]
    assert seqs.tokens[2].tolist() == [0, 0]  # no events: one padding token
    full = tokenize_events(ev, vocab, max_len=8, keys=["a"])
    assert full.lengths.tolist() == [3]
    assert full.tokens[0, 1:3].tolist() == seqs.tokens[0].tolist()  # the last two of a's three events
    assert (seqs.tokens[:2] >= 1).all() and (seqs.tokens < vocab["size"]).all()


def test_token_parts_decode_to_event_category_gap_and_price():
    ev = _events()
    vocab = fit_vocab(ev, max_categories=2)
    n_ev, n_cat, n_gap, n_price = vocab["dims"]
    tok = tokenize_events(ev, vocab, max_len=8, keys=["a"]).tokens[0, :3] - 1
    price, rest = tok % n_price, tok // n_price
    gap, rest = rest % n_gap, rest // n_gap
    cat, event = rest % n_cat, rest // n_cat

    assert [vocab["events"][i] for i in event] == ["view", "add_to_cart", "purchase"]
    assert set(cat.tolist()) == {vocab["categories"].index("shoes")}
    assert gap[0] == 0 and gap[1] < gap[2]  # first event, then 30 s, then 3 days
    assert len(set(price.tolist())) == 1


def test_rare_and_missing_categories_get_their_own_buckets():
    ev = _events()
    vocab = fit_vocab(ev, max_categories=2)  # shoes (3) and hats/rare (1): "rare" falls out or in; None never
    n_ev, n_cat, n_gap, n_price = vocab["dims"]
    toks = tokenize_events(ev, vocab, max_len=8, keys=["b"]).tokens[0, :3] - 1
    cat = (toks // (n_price * n_gap)) % n_cat
    assert cat[0] == n_cat - 1  # missing category
    assert len(vocab["categories"]) == 2


def test_tokens_do_not_depend_on_row_order_and_rows_without_a_key_are_left_out():
    ev = _events()
    vocab = fit_vocab(ev, max_categories=2)
    shuffled = ev.sample(frac=1.0, random_state=4)
    keyless = pd.concat([ev, ev.iloc[[0]].assign(session_id=pd.NA)], ignore_index=True)
    for by in ("user_id", "session_id"):
        a = tokenize_events(ev, vocab, by=by, max_len=4)
        b = tokenize_events(shuffled, vocab, by=by, max_len=4)
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.lengths, b.lengths)
        assert a.keys.tolist() == sorted(ev[by].unique())  # default keys: every value, sorted
    by_session = tokenize_events(keyless, vocab, by="session_id", max_len=4)
    assert by_session.keys.tolist() == ["s1", "s2", "s3"]
    assert np.array_equal(by_session.tokens, tokenize_events(ev, vocab, by="session_id", max_len=4).tokens)


def test_one_shared_sequence_scores_like_the_sequence_repeated_per_row():
    seqs, X, _ = _toy(n=40)
    net = build_net({"vocab_size": 6, "n_tabular": 4, "hidden": 16, "emb_dim": 8})
    one = Sequences(seqs.tokens[:1], seqs.lengths[:1], pd.RangeIndex(1))
    repeated = Sequences(np.repeat(one.tokens, len(X), axis=0), np.repeat(one.lengths, len(X)), pd.RangeIndex(len(X)))

    shared = predict_logits(net, one, X, batch_size=16)  # batches past the first reuse the one sequence

    assert shared.shape == (len(X),)
    np.testing.assert_allclose(shared, predict_logits(net, repeated, X), rtol=0, atol=1e-6)
    assert not np.allclose(shared, shared[0])  # the tabular rows still differ


# --- training and calibration -------------------------------------------------------------------


def _toy(n: int = 800, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype("float32")
    # the label depends on one tabular feature and on whether token 3 appears in the sequence
    tokens = rng.integers(1, 6, size=(n, 4))
    has3 = (tokens == 3).any(axis=1)
    logit = 2.0 * X[:, 0] + 1.5 * np.where(has3, 1.0, -1.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    seqs = Sequences(tokens.astype("int64"), np.full(n, 4, dtype="int64"), pd.RangeIndex(n))
    return seqs, X, y


def test_fit_binary_learns_a_signal_and_is_deterministic_for_a_seed():
    seqs, X, y = _toy()
    settings = TrainSettings(epochs=20, hidden=16, emb_dim=8, patience=5, seed=3, lr=5e-3)
    runs = []
    for _ in range(2):
        net = build_net({"vocab_size": 6, "n_tabular": 4, "hidden": 16, "emb_dim": 8})
        result = fit_binary(net, seqs, X, y, settings=settings)
        runs.append(predict_logits(net, seqs, X))
    p = result.calibration.apply(runs[0])

    assert np.array_equal(runs[0], runs[1])
    holdout = np.arange(len(y)) >= int(0.8 * len(y))
    assert binary_report(y[holdout], p[holdout])["roc_auc"] > 0.75
    has3 = (seqs.tokens == 3).any(axis=1)
    assert p[has3].mean() > p[~has3].mean() + 0.1  # the GRU picked up the token signal
    assert result.best_epoch >= 1 and result.epochs_run <= 20


def test_platt_calibration_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(size=20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(2.0 * z - 0.5)))).astype("int64")
    cal = Calibration.fit(z, y)
    assert cal.scale == pytest.approx(2.0, abs=0.15)
    assert cal.bias == pytest.approx(-0.5, abs=0.1)


# --- registry --------------------------------------------------------------------------------


def _save(ws, **card):
    net = build_net({"vocab_size": 6, "n_tabular": 3, "hidden": 8, "emb_dim": 4})
    scores = pd.DataFrame({"user_id": ["u1", "u2"], "probability": [0.2, 0.9]})
    version = registry.save_model(ws, "churn", state_dict=net.state_dict(), spec={"net": {"n_tabular": 3}}, card=card, scores=scores)
    return version, net


def test_registry_round_trip_versions_and_listing(workspace):
    v1, _ = _save(workspace, metrics={"roc_auc": 0.7})
    v2, net = _save(workspace, metrics={"roc_auc": 0.8})

    state_dict, spec, card = registry.load(workspace, "churn")

    assert (v1, v2) == ("v1", "v2")
    assert card["version"] == "v2" and spec["net"] == {"n_tabular": 3}
    for k, v in net.state_dict().items():
        assert torch.equal(state_dict[k], v)
    assert registry.load(workspace, "churn", "v1").card["metrics"] == {"roc_auc": 0.7}
    listed = registry.list_models(workspace)
    assert [(r["name"], r["version"], r["metrics"]["roc_auc"]) for r in listed] == [("churn", "v1", 0.7), ("churn", "v2", 0.8)]
    assert registry.load_scores(workspace, "churn")["probability"].tolist() == [0.2, 0.9]


def test_weights_are_safetensors_not_pickles(workspace):
    _save(workspace)
    path = registry.model_dir(workspace, "churn") / registry.WEIGHTS
    with safe_open(str(path), framework="pt") as fh:
        assert "skip.weight" in set(fh.keys())
    assert not path.read_bytes().startswith(b"\x80")  # a pickle stream starts with PROTO 0x80


def test_a_crash_mid_save_leaves_no_version_and_no_temp_folder(workspace, monkeypatch):
    _save(workspace)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)  # fails after the weights were written
    with pytest.raises(OSError, match="disk full"):
        _save(workspace)

    assert registry.versions(workspace, "churn") == ["v1"]
    assert [p.name for p in (workspace.models_dir / "churn").iterdir()] == ["v1"]


def test_corrupted_weights_give_a_clear_error(workspace):
    _save(workspace)
    path = registry.model_dir(workspace, "churn") / registry.WEIGHTS
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(ModelError, match=r"corrupted.*shopsight train churn"):
        registry.load(workspace, "churn")


def test_truncated_weights_without_checksum_give_a_clear_error(workspace):
    _save(workspace)
    folder = registry.model_dir(workspace, "churn")
    card = json.loads((folder / registry.CARD).read_text())
    del card["weights_sha256"]
    (folder / registry.CARD).write_text(json.dumps(card))
    (folder / registry.WEIGHTS).write_bytes((folder / registry.WEIGHTS).read_bytes()[:40])

    with pytest.raises(ModelError, match="corrupted"):
        registry.load(workspace, "churn")


def test_unreadable_spec_gives_a_clear_error(workspace):
    _save(workspace)
    (registry.model_dir(workspace, "churn") / registry.SPEC).write_text('{"schema_version": 1, ')
    with pytest.raises(ModelError, match="spec.json is corrupted"):
        registry.load(workspace, "churn")


def test_incompatible_spec_schema_gives_a_clear_error(workspace):
    _save(workspace)
    path = registry.model_dir(workspace, "churn") / registry.SPEC
    spec = json.loads(path.read_text())
    spec["schema_version"] = 999
    path.write_text(json.dumps(spec))

    with pytest.raises(ModelError, match=r"schema 999.*retrain"):
        registry.load(workspace, "churn")


def test_missing_model_or_version_names_the_fix(workspace):
    with pytest.raises(ModelError, match="shopsight train churn"):
        registry.load(workspace, "churn")
    _save(workspace)
    with pytest.raises(ModelError, match=r"no version 'v7'.*saved: v1"):
        registry.load(workspace, "churn", "v7")
