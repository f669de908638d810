"""From an analyst's words to a ``query_metric`` spec: which metric, grouped how, over whom, when.

The router has already pulled out what every tool shares (dates, a known category, a country
code, a device, a limit, bought / did not buy: :class:`tools.registry.Entities`); this module
reads the rest of the question — metric words, dimensions, score populations, thresholds, funnel
steps, payment methods, comparisons — with word rules, because a 135M model cannot fill a spec.

It never guesses a value the workspace may lack: a payment method, an unknown category or a
cohort month is passed on as said, and the tool answers with the values that do exist. What the
words cannot decide is left to the engine's defaults (all data, sorted by value, ten rows).
Not a tool module: :mod:`tools.query_metric` uses :func:`metric_args` as its route's builder.
"""

from __future__ import annotations

import re
from typing import Any

from shopsight.tools.registry import ConversationState, Entities
from shopsight.tools.words import country_names

# --- the words ---------------------------------------------------------------------------------
_MODEL_WORDS = {
    "risk": r"fraud(?:[- ]risk)?|risk|riskiness",
    "churn": r"churn(?:[- ]risk)?|churning|lapse",
    "intent": r"(?:purchase[- ])?intent|buying intent",
}
_ANY_MODEL = "|".join(f"(?P<{name}>{words})" for name, words in _MODEL_WORDS.items())  # once per pattern: named groups
_SOME_MODEL = "|".join(f"(?:{words})" for words in _MODEL_WORDS.values())
_ABOVE = r"above|over|greater than|more than|higher than|at least|exceeding|>=|>|≥"
_BELOW = r"below|under|less than|lower than|at most|<=|<|≤"
# "a fraud score above 0.8", "churn probability of at least 70%", "risk > 0.5"
_THRESHOLD = re.compile(
    rf"\b(?:{_ANY_MODEL})(?:\s+(?:score|probability|prob|likelihood|risk|rating))*s?\s*(?:of\s+)?"
    rf"(?P<op>{_ABOVE}|{_BELOW})\s*(?P<x>\d*\.?\d+)\s*(?P<pct>%|percent\b)?",
    re.I,
)
_SCORE_ABOVE_ONLY = re.compile(rf"\b(?:score|probability)s?\s+(?P<op>{_ABOVE}|{_BELOW})\s*(?P<x>\d*\.?\d+)\s*(?P<pct>%|percent\b)?", re.I)
_HIGH_RISK = re.compile(
    r"\bhigh[- ]risk\b|\brisky\s+(?:users|customers|shoppers|accounts|buyers|people)\b|\bflagged\b|\bfraudsters?\b"
    r"|\blikely\s+fraud(?:ulent)?\b|\bsuspicious\s+(?:users|customers|shoppers|accounts|buyers|people)\b"
    r"|\b(?:users|customers|shoppers|accounts|buyers|people)\s+(?:who|that)\s+look\s+(?:like\s+fraud|fraudulent|risky)\b",
    re.I,
)
_LIKELY_CHURN = re.compile(
    r"\b(?:likely|about|going|set|expected)\s+to\s+(?:churn|lapse|leave|quit)\b|\bchurners?\b|\bat\s+risk\s+of\s+(?:churn\w*|leaving|lapsing)\b"
    r"|\bflight\s+risks?\b|\bhigh\s+churn\s+risk\b",
    re.I,
)
_LIKELY_BUY = re.compile(r"\b(?:likely|ready|about|going)\s+to\s+(?:buy|purchase|order|convert)\b|\bhigh[- ]intent\b", re.I)
_SCORE_WORD = re.compile(rf"\b(?:{_ANY_MODEL})\s*(?:score|probability|prob|likelihood|risk)s?\b|\bchurn\b|\bfraud\b", re.I)

# Retention as a measure, not as the team or campaign that does it ("call the retention team").
RETENTION_MEASURE = (r"\bretention\b(?!\s+(?:team|teams|campaigns?|offers?|e-?mails?|calls?|budget|strateg\w*|program\w*|managers?"
                     r"|specialists?|efforts?|actions?|lists?|desk|squad|department))")
_RETENTION = re.compile(RETENTION_MEASURE + r"|\bretain(?:ed)?\b|\bcohorts?\b.{0,40}\b(?:come|came|coming)\s+back\b|\bcome\s+back\b|\breturn(?:ing)?\s+(?:users|customers|rate)\b", re.I)
_FUNNEL = re.compile(r"\bfunnel\b|\bview[- ]to[- ]purchase\b|\bstep\s+by\s+step\b", re.I)
_ABANDON = re.compile(r"\babandon(?:ment|s|ed\s+carts?|ing\s+carts?)?\b", re.I)
_REFUND_RATE = re.compile(r"\brefund(?:s|ed)?\b", re.I)
_CART_TO_PURCHASE = re.compile(
    r"\bcart[- ]to[- ](?:purchase|order|checkout|buy)\b|\bfrom\s+(?:the\s+)?(?:cart|basket)\s+to\s+(?:purchase|order|checkout|buying)\b"
    r"|\bcarted\s+sessions?\b|\b(?:cart|basket)\s+conversion\b",
    re.I,
)
_AOV = re.compile(r"\baov\b|\baverage\s+(?:order|basket|purchase|ticket)(?:\s+(?:value|size|amount))?\b|\bavg\.?\s+order\b|\bbasket\s+size\b|\bmean\s+order\s+value\b", re.I)
_REVENUE = re.compile(r"\brevenue\b|\bsales\b|\bgmv\b|\bturnover\b|\btakings\b|\bincome\b|\bmoney\b|\bearn(?:s|ed|ing)?\b|\bbrings?\s+in\b|\bhow\s+much\s+(?:did\s+we\s+)?(?:sell|sold|make|made|earn)", re.I)
_SPEND = re.compile(r"\b(?:spends?|spending|spent)\b", re.I)
# What one user's profile states without a period, and a period changes: their spend and orders.
MEASURE_OVER_PERIOD = re.compile(r"\b(?:spends?|spending|spent|revenue|orders?|ordered|purchases?|purchased|bought|buy)\b"
                                 r"|\baverage\s+order\b|\baov\b", re.I)
# "revenue in France in March" is the metric's first sentence; a segment question naming other measures
# too ("sessions, conversion and revenue?") or the order value stays the segment's overview
MONEY_MEASURE = rf"^(?!.*\b(?:conver\w*|sessions?|funnel|carts?|aov|average\s+order)\b).*?(?:{_REVENUE.pattern})"
_CONVERSION = re.compile(r"\bconver(?:sion|t|ts|ted|ting)\b", re.I)
_MEAN_SCORE = re.compile(rf"\b(?:average|mean|typical|avg\.?)\s+(?:{_SOME_MODEL})\b|\b(?:{_SOME_MODEL})\s+(?:score|probability|risk)s?\s+(?:by|per|across)\b"
                         rf"|\b(?:most|highest|lowest|least|biggest)\s+(?:{_SOME_MODEL})\b", re.I)
_SHARE = re.compile(r"\bshare\b|\bpercent(?:age)?\b|\bproportion\b|\bfraction\b|\bwhat\s+part\b|\bhow\s+much\s+of\b|%\s+of\b|\bratio\b", re.I)
_HOW_MANY = re.compile(r"\bhow\s+many\b|\bnumber\s+of\b|\bcount\s+(?:of|the)\b|\bcount\b|\btotal\s+(?:number\s+of\s+)?(?:users|customers|orders|sessions)\b", re.I)
_PEOPLE = r"users|customers|shoppers|buyers|people|accounts|clients|visitors|members"
_COUNT_UNIT = re.compile(rf"\b(?P<users>{_PEOPLE}|user|customer|shopper|buyer|account|who)\b|\b(?P<orders>orders|purchases|sales|transactions)\b|\b(?P<sessions>sessions|visits)\b", re.I)
_FIND = re.compile(rf"\b(?:find|list|show|give|which|who|get|pull)\b.{{0,25}}\b(?:{_PEOPLE}|those|anyone)\b|^\s*who\b", re.I)

_DIMENSIONS: tuple[tuple[str, str], ...] = (
    ("payment", r"payment(?:\s+(?:method|type|option))?s?|pay(?:ment)?\s+methods?|card\s+brands?|wallets?"),
    ("device", r"devices?|platforms?"),
    ("country", r"countr(?:y|ies)|markets?|regions?|geograph(?:y|ies)"),
    ("category", r"categor(?:y|ies)|product\s+(?:lines?|categor(?:y|ies)|groups?)|departments?"),
)
_BY = r"(?:by|per|across|for\s+each|each|every|split\s+by|broken\s+down\s+by|break(?:ing)?\s+down\s+by|breakdown\s+by|grouped\s+by|in\s+each)"
_WHICH = r"(?:which|what|top\s+\d{1,2}|top)"
_TIME_GROUPS = (
    ("day", re.compile(r"\bdaily\b|\b(?:per|by|each|every)\s+day\b|\bday[- ](?:by|over|on)[- ]day\b", re.I)),
    ("week", re.compile(r"\bweekly\b|\b(?:per|by|each|every)\s+week\b|\bweek[- ](?:by|over|on)[- ]week\b|\bwow\b", re.I)),
    ("month", re.compile(r"\bmonthly\b|\b(?:per|by|each|every)\s+month\b|\bmonth[- ](?:by|over|on)[- ]month\b|\bmom\b", re.I)),
)
_COHORT = re.compile(r"\bcohorts?\b|\bsign[- ]?up\s+(?:month|week)\b|\bfirst[- ]seen\b|\bacquisition\s+(?:month|week)\b", re.I)
_LOW = re.compile(r"\b(?:lowest|least|worst|smallest|fewest|weakest|bottom|minimum|min)\b", re.I)
MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december")
_MONTH_WORD = "|".join(list(MONTH_NAMES) + [m[:3] for m in MONTH_NAMES if m != "may"])
_COHORT_OF = re.compile(
    rf"\b(?P<a>{_MONTH_WORD})(?:\s+(?P<ya>20\d\d))?\s+(?:sign[- ]?ups?\s+)?cohort\b|\bcohort\s+(?:of|from)\s+(?P<b>{_MONTH_WORD})(?:\s+(?P<yb>20\d\d))?\b"
    rf"|\b(?P<iso>20\d\d-\d\d)\s+cohort\b"
    rf"|\b(?:joined|signed\s+up|first\s+seen|acquired|arrived|came)\s+(?:in|during)\s+(?P<c>{_MONTH_WORD})(?:\s+(?P<yc>20\d\d))?\b",
    re.I,
)
_COMPARE = re.compile(
    r"\b(?:vs\.?|versus|compared\s+(?:with|to)|against|relative\s+to|than)\s+(?:the\s+)?(?:last|previous|prior|preceding|week\s+before|month\s+before)\b"
    r"|\bfrom\s+(?:the\s+)?(?:last|previous|prior)\s+(?:week|month|period)\b|" + (UP_OR_DOWN := (
        r"\b(?:go|goes|gone|went|going)\s+(?:up|down)\b|\bup\s+or\s+down\b|\b(?:rise|rose|risen|fall|fell|fallen|dropped"
        r"|increased?|decreased?|improved?|worsened?|grown|grew)\b")),
    re.I,
)
_VERSUS = re.compile(r"\b(?P<a>[A-Za-z][\w&-]*)\s+(?:vs\.?|versus|against|compared\s+(?:with|to)|or)\s+(?P<b>[A-Za-z][\w&-]*)\b", re.I)
_DEVICES = ("mobile", "desktop", "tablet", "app")
# Two groups compared on a score: "more likely to churn", "riskier", "more likely to buy".
_COMPARATIVE = re.compile(r"\b(?:more|less)\s+likely\s+to\s+(?P<churn>churn|leave|lapse|stop\s+buying)\b"
                          r"|\b(?:more|less)\s+likely\s+to\s+(?P<intent>buy|purchase|order|convert)\b"
                          r"|\b(?P<risk>riskier|more\s+risky|less\s+risky|(?:higher|lower|bigger|smaller)\s+(?:fraud\s+)?risk)\b", re.I)
_BUY_MORE = re.compile(r"\b(?:buy|purchase|order|convert|check\s+out)s?\s+(?:more|less)\s+(?:often|frequently)\b"
                       r"|\bconverts?\s+(?:better|worse)\b|\b(?:buy|purchase|order)s?\s+more\b", re.I)
# "are tablet users more likely to churn than desktop users?": two groups set side by side with "than"
_GROUP_WORD = r"(?:mobile|desktop|tablet|app|(?-i:[A-Z]{2}))"
THAN_GROUP = (rf"\b{_GROUP_WORD}\s+(?:users|customers|shoppers|buyers|accounts|sessions|orders)\b.{{0,50}}?\bthan\s+"
              rf"(?:(?:those|users|customers|shoppers|ones)\s+(?:on|from|in|using)\s+)?(?:the\s+)?{_GROUP_WORD}\b")
_VERSUS_THAN = re.compile(rf"\b(?P<a>{_GROUP_WORD})\s+(?:users|customers|shoppers|buyers|accounts|sessions|orders)\b.{{0,50}}?\bthan\s+"
                          rf"(?:(?:those|users|customers|shoppers|ones)\s+(?:on|from|in|using)\s+)?(?:the\s+)?(?P<b>{_GROUP_WORD})\b", re.I)
# Payment methods named anywhere are unambiguous; others only after "pay(s) with …".
_WALLETS = re.compile(r"\b(paypal|apple[ _]pay|google[ _]pay|amex|american express|visa|mastercard|klarna|afterpay|promo(?:\s+codes?)?|vouchers?)\b", re.I)
_PAY_WITH = re.compile(
    r"\b(?:pay|pays|paid|paying|payment|checking\s+out|check\s+out)\s+(?:with|by|via|using|through|in)\s+(?:a\s+|an\s+|the\s+)?"
    r"(?P<m>[a-z][a-z0-9 _-]{1,24}?)(?=\s*(?:[?.,;!]|$|\b(?:and|or|in|on|last|this|since|during|from|over|for|vs|versus|before|after|by)\b))",
    re.I,
)
# A named category the router did not know: "in the Gardening category", "category Garden".
_CATEGORY_NAMED = re.compile(r"\b(?:the\s+)?(?P<a>[A-Za-z][\w&-]+)\s+category\b|\bcategory\s+(?:of\s+)?['\"]?(?P<b>[A-Za-z][\w&-]+)", re.I)
_CAPITALISED_AFTER = re.compile(r"\b(?:for|in|within)\s+(?:the\s+)?(?P<name>[A-Z][a-z][\w&-]*)\b(?!\s+(?:users?|customers?|cohort)\b)")
_DAY_NAMES = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "today", "yesterday"}
_NOT_A_CATEGORY = {"which", "what", "each", "every", "a", "the", "per", "by", "top", "one", "same", "product", "that", "this",
                   "highest", "lowest", "best", "worst", "biggest", "has", "have", "with", "is", "and", "or", "most", "least"}

_STEPS_DONE = (
    ("cart", re.compile(r"\badd(?:ed|s|ing)?\s+(?:\w+\s+){0,3}?to\s+(?:the\s+|their\s+|a\s+)?(?:cart|basket)\b|\bcarted\b|\bput\s+(?:\w+\s+){0,3}in\s+(?:the\s+|their\s+)?(?:cart|basket)\b|\bwith\s+(?:a\s+)?(?:full\s+)?(?:cart|basket)\b", re.I)),
    ("checkout", re.compile(r"(?<!never )(?<!not )\b(?:checked\s+out|reached\s+(?:the\s+)?checkout|went\s+to\s+(?:the\s+)?checkout|started\s+(?:the\s+)?checkout)\b", re.I)),
    ("view", re.compile(r"\b(?:viewed|browsed|looked\s+at)\b", re.I)),
    ("refund", re.compile(r"\b(?:were|was|got|asked\s+for\s+(?:a\s+)?|requested\s+(?:a\s+)?)refund(?:ed|s)?\b|\brefunded\b", re.I)),
)
_NEVER = r"(?:never|not|didn't|did\s+not|haven't|have\s+not|hasn't|without|but\s+no|no)"
_STEPS_NOT = (
    ("checkout", re.compile(rf"\b{_NEVER}\s+(?:\w+\s+)?(?:check(?:ed|ing)?[\s-]?(?:out)?|reach(?:ed|ing)?\s+(?:the\s+)?checkout|go(?:ing)?\s+to\s+(?:the\s+)?checkout)\b", re.I)),
    ("cart", re.compile(rf"\b{_NEVER}\s+(?:\w+\s+)?(?:add(?:ed|ing)?\s+(?:\w+\s+){{0,3}}?to\s+(?:the\s+)?(?:cart|basket))\b", re.I)),
)

# "how many of those are on mobile?", "what share of them paid with PayPal?": a measure of the users just ranked.
OF_RANKED = re.compile(
    r"\b(?:how\s+many|what\s+(?:share|fraction|percent(?:age)?|proportion|part)|which|what\s+number|how\s+much)\s+of\s+"
    r"(?:those|these|them|(?:those|these|the)\s+(?:users|customers|shoppers|accounts|people))\b"
    r"|\b(?:these|those|the\s+same)\s+(?:users|customers|shoppers|accounts|people)\b", re.I)

DEFAULT_SCORE_LINE = 0.5  # "likely to churn", "likely to buy": the score at or above one half


# --- the builder -------------------------------------------------------------------------------
def metric_args(ent: Entities, state: ConversationState, question: str) -> dict[str, Any]:
    """The ``query_metric`` arguments a question asks for (the router's ``args`` for the metric label).

    Always returns a spec: an analytic question never needs a user id, and where the words name
    no metric the funnel over the scope (sessions to purchases, with every denominator) answers.
    """
    q = question
    model_named = _model_named(q)
    threshold = _threshold(q)
    metric = _metric(q, threshold, model_named)
    compared = _COMPARATIVE.search(q)
    if compared and _versus(q) and not threshold:
        # "are tablet users more likely to churn than desktop users?": each group's average probability, not a count
        metric, model_named = "score_mean", next(k for k, v in compared.groupdict().items() if v)
    elif _BUY_MORE.search(q) and _versus(q) and metric in ("users", "funnel"):
        metric = "session_conversion"  # "do mobile shoppers buy more often than desktop ones?": conversion, not head counts
    of_ranked = OF_RANKED.search(q)
    if of_ranked and metric == "funnel":
        metric = "users"  # "how many of those are on mobile?" counts the users just ranked
    args: dict[str, Any] = {"metric": metric}

    # score metrics read a model: the threshold's, else the one the words name
    if metric in ("score_mean", "score_share_above", "score_count_above"):
        args["model"] = (threshold or {}).get("model") or model_named or "churn"
        if metric != "score_mean" and threshold and threshold["model"] == args["model"]:
            if threshold["op"] == "above":
                args["threshold"] = threshold["x"]
            threshold = None if threshold["op"] == "above" else threshold  # "below" stays a filter
        elif metric != "score_mean" and not threshold:
            population = _population(q)
            if population.get("flagged") == ["risk"] and args["model"] == "risk":
                args["flagged"] = ["risk"]  # the tool reads the threshold off the risk model's card
            elif args["model"] == "churn" and _LIKELY_CHURN.search(q):
                args["threshold"] = DEFAULT_SCORE_LINE
            elif args["model"] == "intent" and _LIKELY_BUY.search(q):
                args["threshold"] = DEFAULT_SCORE_LINE

    group_by, versus = _group_by(q, metric, ent)
    if group_by:
        args["group_by"] = group_by
        if group_by == "score_band" and "model" not in args:
            args["model"] = model_named or "risk"
        if _LOW.search(q) and group_by not in ("day", "week", "month", "cohort_week", "cohort_month", "score_band"):
            args["descending"] = False
        if ent.limit and 1 <= ent.limit <= 20:
            args["limit"] = ent.limit
    cohort = _cohort(q)
    if metric == "retention":
        if cohort:
            args["cohort"] = cohort
        elif ent.since or ent.until:
            args |= ent.filters("since", "until")
    else:
        args |= ent.filters("since", "until")
        if _COMPARE.search(q) and group_by not in ("day", "week", "month"):
            args["compare"] = True

    # filters: the router's entities, then what only these words name
    if ent.user_ids:
        args["user_ids"] = list(ent.user_ids)  # "what did u00218 spend in March?": that user's rows only
    if versus:
        args[versus[0]] = versus[1]
    for column in ("category", "country", "device"):
        value = getattr(ent, column)
        if value and column != group_by and column not in args:
            args[column] = [value]
    if "category" not in args and group_by != "category" and (named := _unknown_category(q, ent)):
        args["category"] = [named]  # not a category of this shop: the tool answers with the ones it has
    payment = _payment(q)
    focus_column = None
    if payment:
        if _SHARE.search(q) and metric in ("users", "orders") and not group_by:
            # "what share of high-risk users pay with X": the users by method, X's share of them first
            args["group_by"], args["focus"], focus_column = "payment", [payment], "payment"
        elif group_by != "payment":
            args["payment"] = [payment]

    scores, flagged = _score_filters(q, args, threshold)
    if scores:
        args["scores"] = scores
    if flagged and "flagged" not in args:
        args["flagged"] = flagged

    if metric in ("users", "sessions", "score_mean", "score_share_above", "score_count_above"):
        did, did_not = _steps(q, ent)
        if did:
            args["did"] = did
        if did_not:
            args["did_not"] = did_not
        if metric == "users" and (_FIND.search(q) or (of_ranked and of_ranked.group(0).lower().startswith("which"))) and not group_by and not focus_column:
            args["examples"] = 10  # "find users who…": name a handful, not just count them
    return args


# --- the pieces -----------------------------------------------------------------------------
def _model_named(q: str) -> str | None:
    """The score a question is about: named as a score ("fraud score"), or by its population words."""
    if m := _SCORE_WORD.search(q):
        text = m.group(0).lower()
        return "risk" if ("fraud" in text or "risk" in text) and "churn" not in text else "churn" if "churn" in text or "lapse" in text else "intent"
    if _HIGH_RISK.search(q):
        return "risk"
    if _LIKELY_CHURN.search(q):
        return "churn"
    if _LIKELY_BUY.search(q):
        return "intent"
    return None


def _threshold(q: str) -> dict[str, Any] | None:
    """``{"model", "op": "above"|"below", "x"}`` for "a fraud score above 0.8" ("80%" reads 0.8)."""
    m = _THRESHOLD.search(q)
    model = None
    if m:
        model = next(name for name in _MODEL_WORDS if m.group(name))
    else:
        m = _SCORE_ABOVE_ONLY.search(q)
        if not m:
            return None
        model = _model_named(q) or "risk"
    x = float(m.group("x"))
    if m.group("pct"):
        x /= 100.0
    op = "above" if re.fullmatch(_ABOVE, m.group("op"), re.I) else "below"
    return {"model": model, "op": op, "x": x}


def _metric(q: str, threshold: dict[str, Any] | None, model_named: str | None) -> str:
    """The metric the words name, the most specific first (abandonment before conversion, …)."""
    if _RETENTION.search(q):
        return "retention"
    if _FUNNEL.search(q):
        return "funnel"
    if _ABANDON.search(q) and not _HOW_MANY.search(q):
        return "cart_abandonment"
    if _CART_TO_PURCHASE.search(q):
        return "cart_to_purchase"
    if _REFUND_RATE.search(q) and (_SHARE.search(q) or re.search(r"\brefund\s+rates?\b|\bhow\s+often\b|\brefunded\s+orders\b|\brefunds?\s+(?:by|per|across)\b", q, re.I)):
        return "refund_rate"
    if _AOV.search(q):
        return "avg_order_value"
    if threshold and threshold["op"] == "above" and not _AOV.search(q) and not _REVENUE.search(q) and not _CONVERSION.search(q):
        return "score_share_above" if _SHARE.search(q) and not _HOW_MANY.search(q) else "score_count_above"
    if _MEAN_SCORE.search(q):
        return "score_mean"
    if _REVENUE.search(q) and not (_HOW_MANY.search(q) and re.search(r"\bsales\b", q, re.I)):
        return "revenue"
    if _SPEND.search(q) and not _FIND.search(q) and not _HOW_MANY.search(q):
        return "revenue"  # "which country spends the most?": money spent is revenue (not "users who spent …")
    if _CONVERSION.search(q):
        return "session_conversion"
    unit = _COUNT_UNIT.search(q)
    if _HOW_MANY.search(q) or _FIND.search(q) or re.search(r"\b(?:orders|sessions|users|customers|visits)\s+(?:by|per|across|over|this|last|since|in)\b", q, re.I):
        if unit and unit.group("orders"):
            return "orders"
        if unit and unit.group("sessions"):
            return "sessions"
        if unit and unit.group("users"):
            if _SHARE.search(q) and not _HOW_MANY.search(q) and (model_named and (_HIGH_RISK.search(q) or _LIKELY_CHURN.search(q) or _LIKELY_BUY.search(q))) and not _payment(q):
                return "score_share_above"
            return "users"
    if _SHARE.search(q) and model_named and (_HIGH_RISK.search(q) or _LIKELY_CHURN.search(q) or _LIKELY_BUY.search(q)) and not _payment(q):
        return "score_share_above"  # "what percentage of our customers are likely to churn?"
    if unit and unit.group("orders"):
        return "orders"  # "what fraction of orders are paid with PayPal?" counts orders, not users
    if _payment(q) or unit and unit.group("users"):
        return "users"
    if unit and unit.group("sessions"):
        return "sessions"
    return "funnel"  # no metric named: the overview of the scope, every step with its denominator


def _group_by(q: str, metric: str, ent: Entities) -> tuple[str | None, tuple[str, list[str]] | None]:
    """The grouping the words ask for, and a "mobile vs desktop" filter that goes with it."""
    if metric == "retention":
        return ("cohort_week" if re.search(r"\bweek(?:ly)?\b", q, re.I) else "cohort_month"), None
    versus = _versus(q)
    if versus:
        return versus[0], versus
    for name, words in _DIMENSIONS:
        if re.search(rf"\b{_BY}\s+(?:the\s+|their\s+|our\s+)?(?:{words})\b|\b{_WHICH}\s+(?:{words})\b|\b(?:{words})\s+(?:breakdown|split|mix|comparison|ranking)\b"
                     rf"|\bbreak(?:s)?\s+down\s+by\s+(?:{words})\b|\bbreak\s+(?:\w+\s+){{1,3}}down\s+by\s+(?:{words})\b", q, re.I):
            return name, None
    for name, pattern in _TIME_GROUPS:
        if pattern.search(q):
            return name, None
    if re.search(rf"\b{_BY}\s+(?:the\s+)?(?:{_SOME_MODEL})?\s*(?:score\s+)?(?:bands?|deciles?|buckets?|brackets?)\b", q, re.I):
        return "score_band", None
    if _COHORT.search(q) and not _COHORT_OF.search(q):
        return ("cohort_week" if re.search(r"\bweek(?:ly)?\b", q, re.I) else "cohort_month"), None
    return None, None


def _versus(q: str) -> tuple[str, list[str]] | None:
    """"mobile vs desktop": group by device over just those two."""
    for m in [*_VERSUS.finditer(q), *_VERSUS_THAN.finditer(q)]:
        a, b = m.group("a").lower(), m.group("b").lower()
        if a in _DEVICES and b in _DEVICES and a != b:
            return "device", [a, b]
        if re.fullmatch(r"[A-Z]{2}", m.group("a")) and re.fullmatch(r"[A-Z]{2}", m.group("b")) and a != b:
            return "country", [m.group("a"), m.group("b")]
    return None


def _cohort(q: str) -> str | None:
    """"the January cohort" → "january"; "the 2026-01 cohort" → "2026-01" (the tool finds the year)."""
    m = _COHORT_OF.search(q)
    if not m:
        return None
    if m.group("iso"):
        return m.group("iso")
    month = (m.group("a") or m.group("b") or m.group("c")).lower()
    year = m.group("ya") or m.group("yb") or m.group("yc")
    full = next(name for name in MONTH_NAMES if name.startswith(month[:3]))
    return f"{full} {year}" if year else full


def _payment(q: str) -> str | None:
    """The payment method a question names, as said ("gift card", "paypal"); the tool matches it to the data."""
    if m := _PAY_WITH.search(q):
        said = re.sub(r"^(?:their|his|her|my|our)\s+", "", m.group("m").strip().lower())
        if said not in ("it", "them", "that", "this", "what", "which", "card", "cards") and not re.match(r"(?:which|what)\b", said):
            return said
    if m := _WALLETS.search(q):
        return m.group(1).lower()
    return None


def _unknown_category(q: str, ent: Entities) -> str | None:
    """A category the words name that the shop lacks ("the Gardening category", "refund rate for Electronics")."""
    m = _CATEGORY_NAMED.search(q)
    if m:
        word = m.group("a") or m.group("b")
        if word.lower() in _NOT_A_CATEGORY or re.fullmatch(r"(?:categor\w*|cart|sessions?|users?)", word, re.I):
            return None
        return word
    if ent.country or ent.device:
        return None
    # a capitalised name after "for"/"in" that is no month, day, country, device or payment method:
    # answered as a category the shop does not have, rather than silently for the whole shop
    for m in _CAPITALISED_AFTER.finditer(q):
        word = m.group("name")
        low = word.lower()
        if (low in _NOT_A_CATEGORY or low in MONTH_NAMES or low in _DAY_NAMES or low in _DEVICES or _WALLETS.fullmatch(word)
                or low in country_names()):
            continue
        return word
    return None


def _population(q: str) -> dict[str, Any]:
    if _HIGH_RISK.search(q):
        return {"flagged": ["risk"]}
    return {}


def _score_filters(q: str, args: dict[str, Any], threshold: dict[str, Any] | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Users kept by score: "likely to churn" (≥ 0.5), "high-risk" (the risk card's threshold), "churn below 0.2"."""
    scores: list[dict[str, Any]] = []
    flagged: list[str] = []
    metric_model = args.get("model") if args["metric"].startswith("score_") else None
    if threshold:
        bound = {"min": threshold["x"]} if threshold["op"] == "above" else {"max": threshold["x"]}
        scores.append({"model": threshold["model"], **bound})
    if _HIGH_RISK.search(q) and metric_model != "risk" and not any(s["model"] == "risk" for s in scores):
        flagged.append("risk")
    if _LIKELY_CHURN.search(q) and metric_model != "churn" and not any(s["model"] == "churn" for s in scores):
        scores.append({"model": "churn", "min": DEFAULT_SCORE_LINE})
    if _LIKELY_BUY.search(q) and metric_model != "intent" and not any(s["model"] == "intent" for s in scores):
        scores.append({"model": "intent", "min": DEFAULT_SCORE_LINE})
    return scores, flagged


def _steps(q: str, ent: Entities) -> tuple[list[str], list[str]]:
    """Funnel steps the counted users (or sessions) reached, and ones they never did."""
    did_not = [step for step, pattern in _STEPS_NOT if pattern.search(q)]
    did = [step for step, pattern in _STEPS_DONE if pattern.search(q) and step not in did_not]
    if ent.purchased is True and "purchase" not in did:
        did.append("purchase")
    elif ent.purchased is False and "purchase" not in did_not and not _ABANDON.search(q):
        did_not.append("purchase")
    if re.search(r"\bbuyers\b|\bwho\s+(?:bought|purchased|ordered)\b", q, re.I) and "purchase" not in did + did_not:
        did.append("purchase")
    return did, did_not
