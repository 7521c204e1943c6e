"""Pure decisions of the orders context: idempotency of every step, compensation tombstones,
request validation naming every bad field, and the saga definition."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from services.orders import domain as d
from services.orders.events import OrderLine
from services.orders.requests import MAX_BODY_BYTES, parse_place_order
from services.orders.saga import SagaTimings, build_definition, render_definition

GOOD = {
    "customer_id": "c-1",
    "items": [{"sku": "MUG-RED", "quantity": 2}, {"sku": "KETTLE-1", "quantity": 1}],
    "currency": "EUR",
    "shipping_address": {
        "name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115",
        "country": "DE",
    },
}


def test_valid_request_parses() -> None:
    request, errors = parse_place_order(json.dumps(GOOD))
    assert errors == []
    assert request is not None
    assert [i.sku for i in request.items] == ["MUG-RED", "KETTLE-1"]


def test_every_bad_field_is_named() -> None:
    bad = {
        **GOOD,
        "customer_id": "no spaces allowed",
        "items": [{"sku": "NOPE", "quantity": 0}, {"sku": "MUG-RED", "quantity": "2"}],
        "currency": "JPY",
        "shipping_address": {**GOOD["shipping_address"], "country": "germany"},
        "coupon": "X",
    }
    request, errors = parse_place_order(json.dumps(bad))
    assert request is None
    fields = {e["field"] for e in errors}
    assert fields == {
        "customer_id", "items[0].sku", "items[0].quantity", "items[1].quantity", "currency",
        "shipping_address.country", "coupon",
    }


@pytest.mark.parametrize("body", [None, b"", b"{not json", b"[1, 2]"])
def test_malformed_body_is_one_error_on_body(body: bytes | None) -> None:
    request, errors = parse_place_order(body)
    assert request is None
    assert [e["field"] for e in errors] == ["body"]


def test_max_body_is_small_but_fits_fifty_lines() -> None:
    items = [{"sku": "MUG-RED", "quantity": 1}] * 50
    assert len(json.dumps({**GOOD, "items": items})) < MAX_BODY_BYTES


def test_fingerprint_ignores_key_order_and_sees_changes() -> None:
    reordered = json.loads(json.dumps(GOOD, sort_keys=True))
    assert d.fingerprint(GOOD) == d.fingerprint(reordered)
    assert d.fingerprint(GOOD) != d.fingerprint({**GOOD, "currency": "USD"})


def test_idempotency_key_maps_to_one_order_per_customer() -> None:
    assert d.order_id_for_key("c1", "k") == d.order_id_for_key("c1", "k")
    assert d.order_id_for_key("c1", "k") != d.order_id_for_key("c2", "k")
    assert d.new_order_id() != d.new_order_id()


def test_replay_decision() -> None:
    assert d.decide_replay("abc", "abc") is d.Replay.SAME
    assert d.decide_replay("abc", "abd") is d.Replay.CONFLICT
    assert d.decide_replay(None, "abd") is d.Replay.CONFLICT


def test_price_lines_merges_skus_and_totals() -> None:
    lines, total = d.price_lines([("MUG-RED", 1), ("KETTLE-1", 2), ("MUG-RED", 3)])
    assert [(line.sku, line.quantity) for line in lines] == [("KETTLE-1", 2), ("MUG-RED", 4)]
    assert total == 2 * 2999 + 4 * 899


def test_reservation_decisions() -> None:
    s = d.ReservationStatus
    assert d.decide_reserve(None) is d.ReserveDecision.CLAIM
    assert d.decide_reserve(s.RESERVING) is d.ReserveDecision.PLACE_HOLDS
    assert d.decide_reserve(s.RESERVED) is d.ReserveDecision.ALREADY_DONE
    assert d.decide_reserve(s.COMMITTED) is d.ReserveDecision.ALREADY_DONE
    # compensated first (tombstone): a late reserve must never take stock
    assert d.decide_reserve(s.RELEASED) is d.ReserveDecision.CLOSED
    assert d.decide_release(None) is d.ReleaseDecision.TOMBSTONE
    for live in (s.RESERVING, s.RESERVED, s.COMMITTED):
        assert d.decide_release(live) is d.ReleaseDecision.FLIP
    assert d.decide_release(s.RELEASED) is d.ReleaseDecision.UNDO
    assert d.undo_kind(s.COMMITTED) is d.UndoKind.RETURN
    assert d.undo_kind(s.RESERVED) is d.UndoKind.UNHOLD
    assert d.undo_kind(s.RESERVING) is d.UndoKind.UNHOLD
    assert d.decide_commit(s.RESERVED) is d.CommitDecision.FLIP
    assert d.decide_commit(s.COMMITTED) is d.CommitDecision.MOVE
    for not_ready in (None, s.RESERVING, s.RELEASED):
        assert d.decide_commit(not_ready) is d.CommitDecision.MISSING


def test_payment_decisions() -> None:
    s = d.PaymentStatus
    assert d.decide_authorize(None) is d.AuthorizeDecision.CALL_PROVIDER
    assert d.decide_authorize(s.AUTHORIZED) is d.AuthorizeDecision.ALREADY_AUTHORIZED
    assert d.decide_authorize(s.DECLINED) is d.AuthorizeDecision.ALREADY_DECLINED
    assert d.decide_authorize(s.VOIDED) is d.AuthorizeDecision.CLOSED
    assert d.decide_capture(s.AUTHORIZED) is d.CaptureDecision.CALL_PROVIDER
    assert d.decide_capture(s.CAPTURED) is d.CaptureDecision.ALREADY_CAPTURED
    assert d.decide_capture(s.VOIDED) is d.CaptureDecision.NOT_AUTHORIZED
    assert d.decide_refund(None) is d.RefundDecision.TOMBSTONE
    assert d.decide_refund(s.AUTHORIZED) is d.RefundDecision.VOID
    assert d.decide_refund(s.CAPTURED) is d.RefundDecision.REFUND
    for done in (s.DECLINED, s.VOIDED, s.REFUNDED):
        assert d.decide_refund(done) is d.RefundDecision.NOOP


def test_cancellation_reason() -> None:
    assert d.cancellation_reason("PaymentDeclined", '{"message": "insufficient funds"}') == (
        "PaymentDeclined", "insufficient funds")
    assert d.cancellation_reason("States.HeartbeatTimeout", None) == ("StepTimedOut", None)
    assert d.cancellation_reason(None, "plain") == ("Unknown", "plain")
    assert d.cancellation_reason("OutOfStock", '{"Error":"OutOfStock","Cause":null}') == (
        "OutOfStock", None)
    wrapped = json.dumps({"Error": "PaymentDeclined",
                          "Cause": json.dumps({"message": "card declined"})})
    assert d.cancellation_reason("PaymentDeclined", wrapped) == ("PaymentDeclined",
                                                                 "card declined")


def test_stock_invariant() -> None:
    ok = d.StockRow(sku="A", initial=10, available=5, reserved=2, shipped=3)
    leak = d.StockRow(sku="B", initial=10, available=5, reserved=2, shipped=2)
    assert d.stock_invariant_violations([ok]) == []
    assert len(d.stock_invariant_violations([ok, leak])) == 1


def test_read_model_helpers() -> None:
    assert d.should_apply_sequence(None, 1)
    assert d.should_apply_sequence(1, 2)
    assert not d.should_apply_sequence(2, 2)
    assert not d.should_apply_sequence(2, 1)
    assert d.sales_day("2026-11-23T09:43:50+00:00") == "2026-11-23"
    lines = [OrderLine(sku="A", quantity=2, unit_price=100), OrderLine(sku="B", quantity=1,
                                                                      unit_price=5)]
    assert d.sales_deltas(lines) == {"A": (2, 200), "B": (1, 5)}


def test_saga_every_task_has_retry_timeouts_and_catch() -> None:
    states = build_definition()["States"]
    tasks = {n: s for n, s in states.items() if s["Type"] == "Task"}
    assert len(tasks) == 12
    for name, state in tasks.items():
        for retry in state["Retry"]:
            assert retry["JitterStrategy"] == "FULL", name
            assert {"IntervalSeconds", "MaxAttempts", "BackoffRate"} <= retry.keys()
        if state["Resource"].endswith("waitForTaskToken"):
            assert state["HeartbeatSeconds"] <= state["TimeoutSeconds"]
            assert state["Parameters"]["MessageBody"]["task_token.$"] == "$$.Task.Token"
            assert "trace.$" in state["Parameters"]["MessageBody"]
        if name != "PublishOrderConfirmed" and name != "PublishOrderCancelled":
            assert state["Catch"][0]["ErrorEquals"] == ["States.ALL"], name


def test_saga_compensates_in_reverse_from_the_failed_step() -> None:
    states = build_definition()["States"]
    assert states["ReserveInventory"]["Catch"][0]["Next"] == "ReleaseInventory"
    assert states["AuthorizePayment"]["Catch"][0]["Next"] == "RefundPayment"
    assert states["CreateShipment"]["Catch"][0]["Next"] == "CancelShipment"
    chain = ["CancelShipment", "RefundPayment", "ReleaseInventory", "MarkCancelled"]
    for here, nxt in itertools.pairwise(chain):
        assert states[here]["Next"] == nxt
    # transient errors only are retried on business steps
    retry = states["AuthorizePayment"]["Retry"][0]["ErrorEquals"]
    assert "PaymentDeclined" not in retry
    assert "States.ALL" not in retry


def test_deploy_file_is_the_built_definition() -> None:
    path = Path(__file__).parents[2] / "deploy" / "statemachines" / "order-saga.asl.json"
    assert json.loads(path.read_text()) == build_definition()


def test_render_substitutes_and_scales() -> None:
    subs = {
        "InventoryTasksQueueUrl": "q-inv", "PaymentTasksQueueUrl": "q-pay",
        "ShippingTasksQueueUrl": "q-ship", "OrdersTableName": "t", "OrdersBusName": "b",
    }
    text = render_definition(subs, SagaTimings(heartbeat_seconds=2, timeout_seconds=5))
    assert "${" not in text
    body = json.loads(text)["States"]["ReserveInventory"]
    assert body["HeartbeatSeconds"] == 2
    assert body["Parameters"]["MessageBody"]["heartbeat_seconds"] == 2
    with pytest.raises(ValueError, match="heartbeat_seconds"):
        SagaTimings(heartbeat_seconds=10, timeout_seconds=5)


def _envelope(data: dict[str, object], type_: str, seq: int) -> object:
    from services.orders._envelopes import decode_order_event
    from shared.consumers import Message, SourceKind

    body = {"detail": {"id": f"e-{type_}", "type": type_, "source": "fleetline.orders",
                       "sequence": seq, "time": "2026-11-23T10:00:00Z", "data": data,
                       "unknown_field": "ignored"}}
    return decode_order_event(Message(id="m", body=json.dumps(body), source=SourceKind.SQS,
                                      source_name="q"))


ORDER = {"order_id": "o-1", "customer_id": "c-1", "currency": "EUR", "total": 1798,
         "items": [{"sku": "MUG-RED", "quantity": 2, "unit_price": 899}],
         "placed_at": "2026-11-23T09:59:00Z"}


def test_history_rows_and_emails_from_events() -> None:
    from services.orders.notifications import compose
    from services.orders.projection import history_view

    placed = _envelope({**ORDER, "shipping_address": GOOD["shipping_address"]}, "OrderPlaced", 1)
    confirmed = _envelope({**ORDER, "confirmed_at": "2026-11-23T10:00:00Z",
                           "payment_id": "ch_1", "shipment_id": "sh-1"}, "OrderConfirmed", 2)
    cancelled = _envelope({**ORDER, "reason": "PaymentDeclined"}, "OrderCancelled", 2)
    assert history_view(placed)["status"] == "PLACED"  # type: ignore[arg-type]
    row = history_view(confirmed)  # type: ignore[arg-type]
    assert (row["status"], row["seq"], row["shipment_id"]) == ("CONFIRMED", 2, "sh-1")
    assert compose(placed) is None  # type: ignore[arg-type]
    email = compose(cancelled)  # type: ignore[arg-type]
    assert email is not None
    assert email.key == "e-OrderCancelled"
    assert "PaymentDeclined" in email.body


def test_unknown_event_type_and_bad_data_are_refused_with_the_field() -> None:
    from shared.errors import InvalidMessageError

    with pytest.raises(InvalidMessageError, match="type"):
        _envelope(ORDER, "OrderShipped", 2)
    with pytest.raises(InvalidMessageError, match="data"):
        _envelope({"order_id": "o-1"}, "OrderConfirmed", 2)


def test_a_body_that_is_not_utf8_says_so() -> None:
    request, errors = parse_place_order(b'{"customer_id": "caf\xe9"}')
    assert request is None
    assert errors == [{"field": "body", "message": (
        "not UTF-8 text: byte 0xe9 at position 20 (invalid continuation byte); send the JSON "
        "encoded as UTF-8")}]


def test_an_order_event_with_a_broken_detail_names_the_detail() -> None:
    from services.orders._envelopes import decode_order_event
    from shared.consumers import Message, SourceKind
    from shared.errors import InvalidMessageError

    def decode(body: object) -> str:
        with pytest.raises(InvalidMessageError) as refused:
            decode_order_event(Message(id="m", body=json.dumps(body), source=SourceKind.SQS,
                                       source_name="q"))
        return str(refused.value)

    assert decode({"detail-type": "OrderConfirmed", "detail": "{broken"}) == (
        "detail: the OrderConfirmed event's detail must be an event envelope (a JSON object), "
        "got str")
    assert decode({"detail-type": "OrderConfirmed", "detail": {"id": "e-1"}}).startswith(
        "type: missing: the envelope has no event type")
    assert "'Nope' is not an order event" in decode({"detail": {"id": "e", "type": "Nope"}})
