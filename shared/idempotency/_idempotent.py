"""Running an outside effect (a payment call, an email) at most once per key.

    guard = Idempotency(aws, IdempotencyConfig(table=..., namespace="payments.charge"))
    receipt = await guard.run(request, lambda: provider.charge(request), key="order_id")

or as decorators: `@idempotent(config, key="order_id", aws=clients)` on an async function
whose first argument is the request, and `@idempotent_handler(config, key="body.order_id")`
on an async Lambda handler `(event, context)`.

The first caller writes INPROGRESS with a lease of `config.lease` seconds and an owner token,
runs the effect while a heartbeat task (in the same task group) renews the lease, then stores
the result as COMPLETED, conditional on its token. Repeats get the stored result (JSON-decoded);
a caller arriving while the lease is live gets IdempotencyInProgressError (retryable); after a
crash the key is free again once the lease expires, and the crashed holder, should it wake
up, is fenced out (IdempotencyLeaseLostError) because its token no longer matches. A failed
effect releases the key so that a retry runs it again.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

import anyio
import structlog

from shared.aws import AwsClients, ClientSettings
from shared.idempotency._config import IdempotencyConfig
from shared.idempotency._errors import (
    IdempotencyInProgressError,
    IdempotencyKeyReuseError,
    IdempotencyLeaseLostError,
    ResultNotStorableError,
)
from shared.idempotency._state import KeySource, Verdict, extract_key, judge, payload_hash
from shared.idempotency._store import IdempotencyStore

__all__ = ["Idempotency", "idempotent", "idempotent_handler"]

T = TypeVar("T")
P = ParamSpec("P")
_ACQUIRE_ATTEMPTS = 3
_log = structlog.get_logger("shared.idempotency")


class Idempotency:
    """Runs effects at most once per key, with records in `config.table`."""

    def __init__(
        self, aws: AwsClients, config: IdempotencyConfig, *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = IdempotencyStore(aws, config)
        self._clock = clock

    def key_for(self, request: Any, key: KeySource) -> str:
        return f"{self.config.namespace}#{extract_key(key, request)}"

    async def run(
        self, request: Any, effect: Callable[[], Awaitable[T]], *, key: KeySource
    ) -> T:
        """The effect's result, running `effect` only when no caller ran it for this key.

        Raises IdempotencyKeyError (no key in `request`), IdempotencyKeyReuseError (same key,
        other payload), IdempotencyInProgressError (held elsewhere; retryable),
        IdempotencyLeaseLostError (we were fenced out; our result discarded),
        ResultNotStorableError (result not JSON or too large; the key is released), and
        whatever `effect` raises (the key is released)."""
        record_key = self.key_for(request, key)
        digest = payload_hash(request) if self.config.hash_payload else ""
        owner = uuid.uuid4().hex
        for _ in range(_ACQUIRE_ATTEMPTS):
            now = self._clock()
            existing = await self.store.acquire(
                record_key, owner=owner, payload_hash=digest, now=now
            )
            if existing is None:
                return await self._hold(record_key, owner, effect)
            verdict = judge(existing, digest, now=now)
            if verdict is Verdict.RETURN_RESULT:
                _log.info("idempotent_repeat", key=record_key)
                return cast(T, json.loads(existing.result or "null"))
            if verdict is Verdict.KEY_REUSE:
                raise IdempotencyKeyReuseError(record_key)
            if verdict is Verdict.IN_PROGRESS:
                raise IdempotencyInProgressError(
                    record_key, retry_after=max(0.0, (existing.lease_until or now) - now)
                )
            # ACQUIRE: the record changed between our write and its answer; try again.
        raise IdempotencyInProgressError(record_key, retry_after=self.config.lease)

    async def _hold(self, record_key: str, owner: str, effect: Callable[[], Awaitable[T]]) -> T:
        lost = False
        outcome: list[tuple[bool, Any]] = []

        async def heartbeat(scope: anyio.CancelScope) -> None:
            nonlocal lost
            while True:
                await anyio.sleep(self.config.heartbeat)
                try:
                    renewed = await self.store.renew(record_key, owner=owner, now=self._clock())
                except Exception as exc:  # a blip: keep the effect running, try again
                    _log.warning("idempotency_renew_failed", key=record_key, error=str(exc))
                    continue
                if not renewed:
                    lost = True
                    scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat, tg.cancel_scope)
            try:
                outcome.append((True, await effect()))
            except Exception as exc:
                outcome.append((False, exc))
            tg.cancel_scope.cancel()
        if lost or not outcome:
            raise IdempotencyLeaseLostError(record_key)
        succeeded, value = outcome[0]
        if not succeeded:
            await self.store.release(record_key, owner=owner)
            raise value
        try:
            stored = json.dumps(value, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            await self.store.release(record_key, owner=owner)
            raise ResultNotStorableError(f"result is not JSON: {exc}") from None
        if len(stored.encode()) > self.config.max_result_bytes:
            await self.store.release(record_key, owner=owner)
            raise ResultNotStorableError(
                f"result is {len(stored)} bytes; at most {self.config.max_result_bytes} are stored"
            )
        if not await self.store.complete(record_key, owner=owner, result=stored,
                                         now=self._clock()):
            raise IdempotencyLeaseLostError(record_key)
        return cast(T, value)


def idempotent(
    config: IdempotencyConfig,
    *,
    key: KeySource,
    aws: AwsClients | Callable[[], AwsClients],
    request: int | str = 0,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorate an async function so it runs once per key. `request` names the argument (by
    position or keyword) that holds the request the key and payload hash come from; `aws` is
    the clients or a function returning them (looked up per call)."""

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            if isinstance(request, int):
                if len(args) <= request:
                    raise TypeError(f"{fn.__name__}: missing positional argument {request}")
                payload = args[request]
            else:
                if request not in kwargs:
                    raise TypeError(f"{fn.__name__}: missing keyword argument {request!r}")
                payload = kwargs[request]
            clients = aws if isinstance(aws, AwsClients) else aws()
            guard = Idempotency(clients, config)
            return await guard.run(payload, lambda: fn(*args, **kwargs), key=key)

        return wrapper

    return decorate


def idempotent_handler(
    config: IdempotencyConfig, *, key: KeySource, settings: ClientSettings | None = None
) -> Callable[[Callable[[Any, Any], Awaitable[T]]], Callable[[Any, Any], T]]:
    """Decorate an async Lambda handler `(event, context)`: the result is a synchronous
    Lambda entry point that runs the handler once per key taken from the event."""

    def decorate(fn: Callable[[Any, Any], Awaitable[T]]) -> Callable[[Any, Any], T]:
        @functools.wraps(fn)
        def handler(event: Any, context: Any = None) -> T:
            async def main() -> T:
                async with AwsClients(settings) as aws:
                    guard = Idempotency(aws, config)
                    return await guard.run(event, lambda: fn(event, context), key=key)

            return anyio.run(main)

        return handler

    return decorate
