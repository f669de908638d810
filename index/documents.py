"""One document per session, written for a reader, with the metadata the index filters on.

A document reads like an analyst's note: "2026-03-04 09:12, mobile, 14 min, US: searched
"wireless earbuds"; viewed 5 items in Audio (avg $118); added 'Sony WF-1000XM5' to cart;
no purchase." Free text from the events (searches, reviews) is masked for personal data,
shortened and quoted so it reads as data, never as an instruction; device and country,
shown in the note and stored as metadata, are masked too.

What gets embedded is the same note without its date and time and without order ids
(``embed_text``): those are metadata the index filters and cites exactly, they carry no
meaning a semantic query can match, and they are a fifth of a note's tokens — the embedder's
cost grows with tokens, so leaving them out makes builds that much faster.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from shopsight.behavior.features import session_table
from shopsight.behavior.privacy import mask_pii, mask_text_bounded

# Bump when the wording (or what is embedded) changes: every hash changes and the index re-embeds all.
DOC_VERSION = "2"
DOC_COLUMNS = ["id", "document", "embed_text", "metadata", "content_hash"]
CATEGORY_SEP = "|"
MAX_QUOTE = 80
MAX_ITEMS = 3
MAX_FIELD = 80  # device and country as shown in a note and stored as metadata
# How much of a free text is read for a quote of `limit` characters: enough that flattening
# runs of whitespace still fills the quote, plus a margin for personal data across the cut.
QUOTE_SOURCE_FACTOR = 4
QUOTE_SOURCE_MARGIN = 256


def categories_key(categories: list[str]) -> str:
    """Categories as one metadata string, "|Audio|Phones|", so "|Audio|" matches exactly one name."""
    clean = sorted({str(c).replace(CATEGORY_SEP, "/") for c in categories if c is not None and str(c) != ""})
    return CATEGORY_SEP + CATEGORY_SEP.join(clean) + CATEGORY_SEP if clean else ""


def quote(text: str, limit: int = MAX_QUOTE) -> str:
    """Mask, flatten and shorten free text, and wrap it in double quotes so it reads as data.

    Only the start of the text that can end up in the quote is masked (a margin covers
    whitespace that flattening removes and personal data across the cut), so a 30 MB
    review costs what its first few hundred characters cost.
    """
    text = str(text)
    source = text[: limit * QUOTE_SOURCE_FACTOR + QUOTE_SOURCE_MARGIN]
    flat = " ".join(mask_pii(source).split()).replace('"', "'")
    if len(flat) > limit or len(source) < len(text):
        flat = flat[: limit - 1].rstrip() + "…"
    return f'"{flat}"'


def mask_field(value: Any) -> str:
    """A free-text metadata field (device, country) masked and bounded; "" for a missing value.

    Ingest masks these already; a workspace written before it did, or by other code, still
    never sends a raw value to the store.
    """
    if not isinstance(value, str) or not value:
        return ""
    return mask_text_bounded(value, MAX_FIELD)


def _money(x: float) -> str:
    return f"${x:,.0f}" if x >= 100 else f"${x:,.2f}"


def _names(items: list[str], names: dict[str, str]) -> str:
    counts = Counter(items)
    shown = [f"'{names.get(i, i)}'" + (f" x{n}" if n > 1 else "") for i, n in list(counts.items())[:MAX_ITEMS]]
    more = len(counts) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _describe(rows: dict[str, list[Any]], names: dict[str, str], purchased: bool) -> tuple[str, str]:
    """What one session did, from its events (already in time order): the clauses with the
    order ids cited, and the same without them (for embedding)."""
    parts: list[str] = []
    ref, bought_at = "", -1
    ev, item, cat, price, qty, text, order = (
        rows["event"], rows["item_id"], rows["category"], rows["price"], rows["quantity"], rows["text"], rows["order_id"]
    )
    searches = list(dict.fromkeys(quote(t, 60) for e, t in zip(ev, text) if e == "search" and t))
    if searches:
        parts.append("searched " + ", ".join(searches[:MAX_ITEMS]) + (f" and {len(searches) - MAX_ITEMS} more" if len(searches) > MAX_ITEMS else ""))
    elif "search" in ev:
        parts.append(f"searched {ev.count('search')} times")
    viewed = [i for i, e in enumerate(ev) if e == "view"]
    if viewed:
        cats = Counter(cat[i] for i in viewed if cat[i])
        prices = [price[i] for i in viewed if price[i] is not None]
        where = " in " + ", ".join(c for c, _ in cats.most_common(MAX_ITEMS)) if cats else ""
        avg = f" (avg {_money(float(np.mean(prices)))})" if prices else ""
        parts.append(f"viewed {len(viewed)} item{'s' if len(viewed) != 1 else ''}{where}{avg}")
    carted = [item[i] for i, e in enumerate(ev) if e == "add_to_cart" and item[i]]
    if carted:
        parts.append(f"added {_names(carted, names)} to cart")
    removed = ev.count("remove_from_cart")
    if removed:
        parts.append(f"removed {removed} from cart")
    if "checkout" in ev:
        parts.append("checked out")
    bought = [i for i, e in enumerate(ev) if e == "purchase"]
    if bought:
        total = sum((price[i] or 0.0) * (qty[i] or 1) for i in bought)
        orders = list(dict.fromkeys(order[i] for i in bought if order[i]))
        ref = f" (order {', '.join(orders[:2])})" if orders else ""
        bought_at = len(parts)
        parts.append(f"bought {_names([item[i] for i in bought if item[i]], names) or 'items'} for {_money(total)}")
    refunds = [i for i, e in enumerate(ev) if e == "refund"]
    if refunds:
        parts.append(f"refunded {_names([item[i] for i in refunds if item[i]], names) or str(len(refunds)) + ' items'}")
    reviews = [quote(text[i], MAX_QUOTE) for i, e in enumerate(ev) if e == "review" and text[i]]
    if reviews:
        parts.append("reviewed: " + "; ".join(reviews[:2]))
    elif "review" in ev:
        parts.append("left a review")
    if "login" in ev and not parts:
        parts.append("logged in")
    if not purchased:
        parts.append("no purchase")
    cited = parts.copy()
    if ref:
        cited[bought_at] += ref
    return "; ".join(cited), "; ".join(parts)


def content_hash(document: str, metadata: dict[str, Any]) -> str:
    """A short stable hash of what gets stored: equal hashes mean nothing to re-embed."""
    payload = json.dumps([DOC_VERSION, document, metadata], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def session_documents(events: pd.DataFrame, catalogue: pd.DataFrame | None = None) -> pd.DataFrame:
    """One readable, PII-masked document per session, with its metadata and a content hash.

    Args:
        events: Canonical, sessionized events (``behavior.events`` schema).
        catalogue: Optional item table with ``item_id`` and ``name``; items without a
            name are shown by id.

    Returns:
        A DataFrame with columns ``id`` (the session id), ``document``, ``embed_text`` (the
        document without date, time and order ids: what is embedded), ``metadata`` (a dict
        of ``user_id, session_id, start`` (epoch seconds), ``end``, ``n_events``,
        ``purchased``, ``revenue``, ``categories`` ("|A|B|"), ``device``, ``country``) and
        ``content_hash``, ordered by session start.
    """
    if events.empty:
        return pd.DataFrame(columns=DOC_COLUMNS)
    sessions = session_table(events).sort_values(["start", "session_id"], kind="stable")
    names: dict[str, str] = {}
    if catalogue is not None and {"item_id", "name"} <= set(catalogue.columns):
        names = dict(zip(catalogue["item_id"].astype(str), catalogue["name"].astype(str)))

    cols = ["session_id", "event", "item_id", "category", "price", "quantity", "text", "order_id"]
    ev = events.sort_values(["session_id", "ts"], kind="stable")
    data: dict[str, list[Any]] = {}
    for c in cols:
        if c not in ev.columns:
            data[c] = [None] * len(ev)
        elif c == "price":
            data[c] = [None if math.isnan(p) else p for p in ev[c].astype("float64").tolist()]
        else:
            data[c] = ev[c].astype(object).where(ev[c].notna(), None).tolist()
    # Slice the sorted columns per session once instead of a slow groupby-apply.
    sid = np.asarray(data["session_id"], dtype=object)
    bounds = np.flatnonzero(sid[1:] != sid[:-1]) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(sid)]])
    spans = {sid[a]: (a, b) for a, b in zip(starts, ends)}

    has_device = "device" in sessions.columns
    has_country = "country" in sessions.columns
    ids, docs, texts, metas, hashes = [], [], [], [], []
    for row in sessions.itertuples(index=False):
        a, b = spans[row.session_id]
        rows = {c: data[c][a:b] for c in cols[1:]}
        device = mask_field(row.device) if has_device else ""
        country = mask_field(row.country) if has_country else ""
        start = pd.Timestamp(row.start).tz_convert("UTC") if pd.Timestamp(row.start).tzinfo else pd.Timestamp(row.start)
        shape = ", ".join(p for p in (device, f"{max(1, round(row.minutes))} min", country) if p)
        cited, body = _describe(rows, names, bool(row.purchased))
        doc = f"{start.strftime('%Y-%m-%d %H:%M')}, {shape}: {cited}."
        text = f"{shape}: {body}."
        meta = {
            "user_id": str(row.user_id),
            "session_id": str(row.session_id),
            "start": int(start.timestamp()),
            "end": int(pd.Timestamp(row.end).timestamp()),
            "n_events": int(row.n_events),
            "purchased": bool(row.purchased),
            "revenue": round(float(row.revenue), 2),
            # From the rows, not session_table's list column (its type varies across pandas versions).
            "categories": categories_key([c for c in rows["category"] if c]),
            "device": device,
            "country": country,
        }
        ids.append(str(row.session_id))
        docs.append(doc)
        texts.append(text)
        metas.append(meta)
        hashes.append(content_hash(doc, meta))
    return pd.DataFrame({"id": ids, "document": docs, "embed_text": texts, "metadata": metas, "content_hash": hashes})
