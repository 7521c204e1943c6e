"""The exception tree of the orders context.

    FleetlineError (shared.errors)
    ├── PermanentError
    │   └── StepFailed                 a saga step cannot succeed: SendTaskFailure(error_name)
    │       ├── OutOfStock
    │       ├── PaymentDeclined
    │       ├── ShippingUnavailable
    │       ├── ShipmentClosed         the saga cancelled the shipment before it was created
    │       ├── ReservationClosed      the saga compensated before this reserve ran
    │       ├── ReservationMissing     commit without a live reservation
    │       ├── PaymentClosed          the saga compensated before this authorization ran
    │       ├── PaymentNotAuthorized   capture without an authorization
    │       └── InvalidTask            a task message the worker cannot read
    └── RetryableError
        └── PaymentProviderUnavailable the provider is down or its answer was lost

`error_name` is what the state machine sees (`SendTaskFailure(error=...)`); its Retry lists
the transient names and its Catch sends every other one into compensation.
"""

from __future__ import annotations

from typing import ClassVar

from shared.errors import PermanentError, RetryableError

__all__ = [
    "TRANSIENT_ERROR_NAME",
    "InvalidTask",
    "OutOfStock",
    "PaymentClosed",
    "PaymentDeclined",
    "PaymentNotAuthorized",
    "PaymentProviderUnavailable",
    "ReservationClosed",
    "ReservationMissing",
    "ShipmentClosed",
    "ShippingUnavailable",
    "StepFailed",
]

# What a worker reports for any retryable failure that has no name of its own.
TRANSIENT_ERROR_NAME = "Orders.Transient"


class StepFailed(PermanentError):
    """A saga step that cannot succeed; the saga compensates."""

    error_name: ClassVar[str] = "Orders.Internal"


class OutOfStock(StepFailed):
    error_name = "OutOfStock"


class PaymentDeclined(StepFailed):
    error_name = "PaymentDeclined"


class ShippingUnavailable(StepFailed):
    error_name = "ShippingUnavailable"


class ShipmentClosed(StepFailed):
    error_name = "ShipmentClosed"


class ReservationClosed(StepFailed):
    error_name = "ReservationClosed"


class ReservationMissing(StepFailed):
    error_name = "ReservationMissing"


class PaymentClosed(StepFailed):
    error_name = "PaymentClosed"


class PaymentNotAuthorized(StepFailed):
    error_name = "PaymentNotAuthorized"


class InvalidTask(StepFailed):
    error_name = "Orders.InvalidTask"


class PaymentProviderUnavailable(RetryableError):
    """The payment provider did not answer (outage, timeout, lost response)."""

    error_name: ClassVar[str] = "PaymentProviderUnavailable"
