"""The orders edge: a Lambda behind an API Gateway HTTP API (payload format 2.0).

    POST /orders                  place an order (202 + order id + status URL)
    GET  /orders/{id}             one order, from the order-history read model
    GET  /customers/{id}/orders   a customer's orders (up to 100), newest first, from the read model

POST validates with pydantic (400 listing every bad field; 413 over 16 KB, before parsing)
and writes the Order item and its OrderPlaced event through the outbox unit of work: one
conditional PutItem; the table's stream is the outbox, the relay publishes.

Idempotency-Key: the order id is derived from (customer id, key), so the order item is its
own idempotency record and no second table or write is needed. A repeat with the same body
(compared by a fingerprint of the validated request) answers exactly as the first time;
with a different body, 422. Two racing requests with one key: the version condition lets
one commit; the other reloads and answers as a repeat (or 422). The key is required: without
one a client's retry (after a timeout, a lost answer) would place a second order, so a POST
without it is refused with 400 naming the header, before anything is written.

GET routes read only the read model (CQRS): right after a POST the order may be missing
there for a moment (404 with `Retry-After: 1`); it shows PLACED once OrderPlaced is
projected, then CONFIRMED or CANCELLED.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from opentelemetry import trace

from services.orders.domain import (
    OrderStatus,
    Replay,
    decide_replay,
    fingerprint,
    order_id_for_key,
    price_lines,
)
from services.orders.events import Address, OrderPlaced
from services.orders.requests import MAX_BODY_BYTES, PlaceOrderRequest, parse_place_order
from shared.aws import AwsClients, aws_errors
from shared.config import Resources
from shared.dynamodb import from_item, to_item
from shared.hosts.lambda_ import HttpRequest, HttpResponse, http_api_handler
from shared.outbox import ConcurrencyConflictError, EventDraft, ItemRef, UnitOfWork

__all__ = ["OrdersApi", "Response", "api_routes", "handler"]

_log = structlog.get_logger("services.orders.api")
_KEY_PATTERN: Final = re.compile(r"^[\x21-\x7e]{1,255}$")
_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_CONFLICT_RETRIES: Final = 3


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    headers: Mapping[str, str] | None = None

    def to_apigw(self) -> dict[str, Any]:
        headers = {"content-type": "application/json", **(self.headers or {})}
        return {"statusCode": self.status, "headers": headers,
                "body": json.dumps(self.body, separators=(",", ":")),
                "isBase64Encoded": False}


def _error(status: int, message: str, **extra: Any) -> Response:
    return Response(status, {"message": message, **extra})


def _body_bytes(event: Mapping[str, Any]) -> bytes:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return body.encode() if isinstance(body, str) else bytes(body)


class OrdersApi:
    """The HTTP API's routes. Call with an API Gateway v2 event; returns the response dict."""

    def __init__(self, aws: AwsClients, *, orders_table: str, history_table: str) -> None:
        self._aws = aws
        self.orders_table = orders_table
        self.history_table = history_table

    @classmethod
    def from_environ(cls, aws: AwsClients, resources: Resources | None = None) -> OrdersApi:
        res = resources or Resources.from_environ()
        return cls(aws, orders_table=res.get("OrdersTable"),
                   history_table=res.get("OrderHistoryTable"))

    async def __call__(self, event: Mapping[str, Any]) -> dict[str, Any]:
        return (await self.route(event)).to_apigw()

    async def route(self, event: Mapping[str, Any]) -> Response:
        http = event.get("requestContext", {}).get("http", {})
        method = str(http.get("method") or event.get("httpMethod") or "GET").upper()
        path = str(event.get("rawPath") or http.get("path") or "/").rstrip("/") or "/"
        headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
        parts = [p for p in path.split("/") if p]
        if parts == ["orders"]:
            if method != "POST":
                return _error(405, "use POST /orders", allow="POST")
            return await self.place(_body_bytes(event), headers, event)
        if len(parts) == 2 and parts[0] == "orders":
            if method != "GET":
                return _error(405, "use GET /orders/{id}")
            return await self.get_order(parts[1])
        if len(parts) == 3 and parts[0] == "customers" and parts[2] == "orders":
            if method != "GET":
                return _error(405, "use GET /customers/{id}/orders")
            return await self.customer_orders(parts[1])
        return _error(404, f"no route for {method} {path}")

    # --- POST /orders ---------------------------------------------------------------------

    async def place(
        self, body: bytes, headers: Mapping[str, str], event: Mapping[str, Any] | None = None
    ) -> Response:
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
        request, errors = parse_place_order(body)
        key = headers.get("idempotency-key")
        if key is None:
            errors = [*errors, {"field": "Idempotency-Key", "message": (
                "required: a unique key per order (a UUID), sent again unchanged on a retry, "
                "so a retry cannot place a second order")}]
        elif not _KEY_PATTERN.match(key):
            errors = [*errors, {"field": "Idempotency-Key",
                                "message": "1 to 255 printable ASCII characters"}]
        if request is None or key is None or errors:
            return _error(400, "invalid order", errors=errors)
        print_ = fingerprint(request.model_dump(mode="json"))
        order_id = order_id_for_key(request.customer_id, key)
        request_id = str((event or {}).get("requestContext", {}).get("requestId") or "")
        correlation_id = headers.get("x-correlation-id") or request_id or order_id
        ref = ItemRef(table=self.orders_table, key={"pk": f"ORDER#{order_id}", "sk": "ORDER"},
                      aggregate_id=order_id)
        log = _log.bind(order_id=order_id, correlation_id=correlation_id)
        trace.get_current_span().set_attribute("order.id", order_id)
        for _ in range(_MAX_CONFLICT_RETRIES):
            uow = UnitOfWork(self._aws)
            aggregate = await uow.load(ref)
            if aggregate.exists:
                return self._replay(order_id, aggregate.state, print_, log)
            state, placed = self._new_order(order_id, request, print_, key)
            uow.save(aggregate, state,
                     events=[EventDraft(event=placed, correlation_id=correlation_id)])
            try:
                await uow.commit()
            except ConcurrencyConflictError:
                continue  # a twin request committed first: answer as its repeat
            log.info("order placed", total=placed.total, lines=len(placed.items))
            return self._accepted(order_id)
        return _error(409, "the order changed while placing it; retry")

    def _new_order(
        self, order_id: str, request: PlaceOrderRequest, print_: str, key: str | None
    ) -> tuple[dict[str, Any], OrderPlaced]:
        lines, total = price_lines((i.sku, i.quantity) for i in request.items)
        placed = OrderPlaced(
            order_id=order_id, customer_id=request.customer_id, items=lines,
            currency=request.currency, total=total,
            shipping_address=Address.model_validate(request.shipping_address.model_dump()),
            placed_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        )
        state = {
            **placed.model_dump(mode="json"),
            "status": OrderStatus.PLACED.value,
            "request_fingerprint": print_,
        }
        if key:
            state["idempotency_key"] = key
        return state, placed

    def _accepted(self, order_id: str, *, replayed: bool = False) -> Response:
        """The first answer is always 202 PLACED; a repeat answers the same, whatever the saga
        has done since (the status URL tells the rest)."""
        url = f"/orders/{order_id}"
        headers = {"location": url}
        if replayed:
            headers["idempotent-replayed"] = "true"
        return Response(202, {"order_id": order_id, "status": OrderStatus.PLACED.value,
                              "status_url": url}, headers)

    def _replay(self, order_id: str, state: Mapping[str, Any], print_: str, log: Any) -> Response:
        if decide_replay(state.get("request_fingerprint"), print_) is Replay.SAME:
            log.info("idempotent repeat answered")
            return self._accepted(order_id, replayed=True)
        log.info("idempotency key reused with a different body")
        return _error(422, "this Idempotency-Key was used with a different request body",
                      order_id=order_id)

    # --- GET routes (read model) ------------------------------------------------------------

    async def get_order(self, order_id: str) -> Response:
        if not _ID_PATTERN.match(order_id):
            return _error(400, "invalid order id", errors=[{"field": "id",
                                                             "message": "1-64 of [A-Za-z0-9_-]"}])
        ddb = await self._aws.client("dynamodb")
        with aws_errors():
            page = await ddb.query(
                TableName=self.history_table, IndexName="by-order",
                KeyConditionExpression="order_id = :id",
                ExpressionAttributeValues=to_item({":id": order_id}), Limit=1,
            )
        items = page.get("Items") or []
        if not items:
            return Response(404, {"message": f"order {order_id} not found (yet)"},
                            {"retry-after": "1"})
        return Response(200, _view(from_item(items[0])))

    async def customer_orders(self, customer_id: str) -> Response:
        if not _ID_PATTERN.match(customer_id):
            return _error(400, "invalid customer id",
                          errors=[{"field": "id", "message": "1-64 of [A-Za-z0-9_-]"}])
        ddb = await self._aws.client("dynamodb")
        with aws_errors():
            page = await ddb.query(
                TableName=self.history_table,
                KeyConditionExpression="customer_id = :c",
                ExpressionAttributeValues=to_item({":c": customer_id}),
                Limit=100,
            )
        orders = sorted((_view(from_item(i)) for i in page.get("Items", ())),
                        key=lambda o: str(o.get("placed_at", "")), reverse=True)
        return Response(200, {"customer_id": customer_id, "orders": orders})


_HIDDEN: Final = frozenset({"pk", "sk", "seq"})


def _view(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(item.items()) if k not in _HIDDEN}


def api_routes(aws: AwsClients, resources: Resources) -> dict[str, Any]:
    """The HTTP API's route table for `http_api_handler` (every route key -> one router)."""
    api = OrdersApi.from_environ(aws, resources)

    async def route(request: HttpRequest) -> HttpResponse:
        answer = await api.route(request.raw)
        return HttpResponse(answer.status, answer.body, dict(answer.headers or {}))

    return {key: route for key in ("POST /orders", "GET /orders/{id}",
                                   "GET /customers/{id}/orders", "$default")}


handler = http_api_handler(setup=api_routes, max_body_bytes=MAX_BODY_BYTES)
"""The Lambda behind the HTTP API (`services.orders.api.handler`); `OrdersApi.route` does
the routing by path, so every route key lands in the same function."""
