"""The local HTTP API: route matching, payload 2.0 events, proxy responses (pure)."""

import base64

from shared.local._apigw import Route, build_event, http_response, match_route

ROUTES = [
    Route(route_key="GET /orders/{id}", target="a"),
    Route(route_key="GET /orders/recent", target="b"),
    Route(route_key="ANY /orders/{proxy+}", target="c"),
    Route(route_key="POST /orders", target="d"),
    Route(route_key="$default", target="e"),
]


def test_most_specific_route_wins() -> None:
    assert match_route(ROUTES, "GET", "/orders/recent") == (ROUTES[1], {})
    assert match_route(ROUTES, "GET", "/orders/42") == (ROUTES[0], {"id": "42"})
    assert match_route(ROUTES, "DELETE", "/orders/42/lines") == (ROUTES[2], {"proxy": "42/lines"})
    assert match_route(ROUTES, "post", "/orders/") == (ROUTES[3], {})
    assert match_route(ROUTES, "GET", "/customers") == (ROUTES[4], {})
    assert match_route(ROUTES[:4], "GET", "/customers") is None


def test_event_has_the_v2_shape() -> None:
    event = build_event(
        route_key="POST /orders",
        method="post",
        path="/orders",
        query=[("a", "1"), ("a", "2"), ("b", "x")],
        headers=[
            ("Content-Type", "application/json"),
            ("X-Multi", "1"),
            ("x-multi", "2"),
            ("Cookie", "s=1; t=2"),
            ("Idempotency-Key", "k"),
        ],
        body=b'{"x": 1}',
        path_parameters={},
        now=1_700_000_000.0,
        request_id="r",
    )
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /orders"
    assert event["rawQueryString"] == "a=1&a=2&b=x"
    assert event["queryStringParameters"] == {"a": "1,2", "b": "x"}
    assert event["headers"]["x-multi"] == "1,2"
    assert event["headers"]["idempotency-key"] == "k"
    assert event["cookies"] == ["s=1", "t=2"]
    assert event["body"] == '{"x": 1}'
    assert event["isBase64Encoded"] is False
    assert "pathParameters" not in event
    context = event["requestContext"]
    assert context["http"]["method"] == "POST"
    assert context["timeEpoch"] == 1_700_000_000_000
    assert context["time"] == "14/Nov/2023:22:13:20 +0000"


def test_binary_bodies_are_base64() -> None:
    event = build_event(
        route_key="$default",
        method="PUT",
        path="/f",
        query=[],
        headers=[("content-type", "application/octet-stream")],
        body=b"\x00\xff",
        path_parameters={"id": "1"},
    )
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x00\xff"
    assert event["pathParameters"] == {"id": "1"}


def test_proxy_responses() -> None:
    assert http_response(
        {"statusCode": 202, "headers": {"a": "b"}, "body": "ok", "cookies": ["c=1"]}
    ) == (202, {"a": "b"}, ["c=1"], b"ok")
    assert (
        http_response(
            {"statusCode": 200, "body": base64.b64encode(b"\x01").decode(), "isBase64Encoded": True}
        )[3]
        == b"\x01"
    )
    # without statusCode API Gateway answers 200 with the value as JSON
    assert http_response({"id": 1}) == (200, {"content-type": "application/json"}, [], b'{"id": 1}')
    assert http_response({"statusCode": 204})[3] == b""


def test_a_text_body_that_is_not_utf8_travels_byte_for_byte() -> None:
    # Decoding it with replacement characters turned "not UTF-8" into "Expecting value".
    event = build_event(route_key="$default", method="POST", path="/orders", query=[],
                        headers=[("content-type", "application/json")], body=b'{"a": "\xe9"}',
                        path_parameters={})
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b'{"a": "\xe9"}'
