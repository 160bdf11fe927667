"""Hooks for scripts/schemathesis: the rules that join two fields, which an OpenAPI schema
cannot state, applied to the requests schemathesis means to be valid (positive mode) so that
they are: a window ends after it starts, an anti-sniping window comes with an extension,
a bid has exactly one of `amount` and `max_amount`, a sale has no more stock buckets than units, a buy-now price is at least the start and reserve prices, an order lists a product once, and ids in bodies name a product that exists
(SPIKE_FUZZ_PRODUCT_ID, created by the script). Invalid (negative) requests are left alone.
"""

import os
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

import schemathesis

PRODUCT = os.environ["SPIKE_FUZZ_PRODUCT_ID"]


def _open_window(body):
    """A window around now, so the sale or auction can be bought from or bid on."""
    now = datetime.now(timezone.utc)
    body["start_at"] = (now - timedelta(minutes=1)).isoformat()
    body["end_at"] = (now + timedelta(hours=1)).isoformat()


def _money(text):
    try:
        return Decimal(str(text)) if text is not None else None
    except InvalidOperation:
        return None


def _buy_now_too_low(body):
    """A buy-now price below the start price or the reserve (both valid amounts)."""
    buy_now, start, reserve = (_money(body.get(k)) for k in ("buy_now_price", "start_price", "reserve_price"))
    if buy_now is None or start is None or (body.get("reserve_price") is not None and reserve is None):
        return False
    return buy_now < max(start, reserve or start)


def _more_buckets_than_stock(body):
    buckets, stock = body.get("stock_buckets"), body.get("stock")
    return isinstance(buckets, int) and isinstance(stock, int) and buckets > stock


def _make_valid(case):
    body = case.body
    if not isinstance(body, dict):
        return case
    body = dict(body)
    route = (case.method.upper(), case.operation.path)
    if route == ("POST", "/sales"):
        body["product_id"] = PRODUCT
        _open_window(body)
        if _more_buckets_than_stock(body):
            body["stock_buckets"] = body["stock"]
    elif route == ("POST", "/auctions"):
        _open_window(body)
        if body.get("extend_window_secs") and not body.get("extend_by_secs"):
            body["extend_by_secs"] = 1
        if _buy_now_too_low(body):
            body["buy_now_price"] = str(max(_money(body.get("start_price")), _money(body.get("reserve_price")) or 0))
    elif route == ("POST", "/auctions/{id}/bids"):
        if body.get("amount") is not None and body.get("max_amount") is not None:
            del body["max_amount"]
        elif body.get("amount") is None and body.get("max_amount") is None:
            body["amount"] = "10.00"
    elif route == ("POST", "/orders") and isinstance(body.get("items"), list) and body["items"]:
        first = body["items"][0]
        if isinstance(first, dict):
            body["items"] = [dict(first, product_id=PRODUCT)]
    case.body = body
    return case


@schemathesis.hook
def map_case(context, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return case
    return _make_valid(case)


@schemathesis.hook
def before_add_examples(context, examples):
    """The examples in the spec name a product that does not exist here."""
    for case in examples:
        _make_valid(case)

def _time(text):
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure but a 400 that names a two-field rule the request really broke.

    The examples and coverage phases send their schema-valid requests as they are (map_case
    does not see them); for those, the 400 is the right answer.
    """
    if response is None or response.status_code != 400:
        return True
    try:
        error = response.json()
    except ValueError:
        return True
    # No body at all counts as an empty one (a bid with neither amount).
    body = case.body if isinstance(case.body, dict) else {}
    field, message = error.get("field") or "", error.get("message") or ""
    if field == "end_at":
        start, end = _time(body.get("start_at")), _time(body.get("end_at"))
        return not (start and end and end <= start)
    if field == "buy_now_price" and "at least the start price" in message:
        return not _buy_now_too_low(body)
    if field == "stock_buckets" and "must not exceed stock" in message:
        return not _more_buckets_than_stock(body)
    if field == "extend_by_secs":
        return not (body.get("extend_window_secs") and not body.get("extend_by_secs"))
    if field in ("amount", "max_amount"):
        given = [body.get(name) is not None for name in ("amount", "max_amount")]
        both = all(given) and "cannot be given with amount" in message
        neither = not any(given) and "is required" in message
        return not (both or neither)
    if field.endswith("product_id"):
        # An id the schema cannot know exists, or a product listed twice in one order.
        return not ("no such product" in message or "already in the order" in message)
    return True
