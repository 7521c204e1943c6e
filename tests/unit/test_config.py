import pytest

from shared.config import Resources, resource_env_name
from shared.errors import ConfigurationError


@pytest.mark.parametrize(
    ("key", "env"),
    [
        ("OrdersTable", "FLEETLINE_ORDERS_TABLE"),
        ("DeviceEventsBusName", "FLEETLINE_DEVICE_EVENTS_BUS_NAME"),
        ("SQSQueueUrl", "FLEETLINE_SQS_QUEUE_URL"),
        ("Table2", "FLEETLINE_TABLE2"),
    ],
)
def test_env_name_rule(key: str, env: str) -> None:
    assert resource_env_name(key) == env


def test_missing_resource_names_the_variable() -> None:
    resources = Resources.from_outputs({"OrdersTable": "t-orders"})
    assert resources.get("OrdersTable") == "t-orders"
    with pytest.raises(ConfigurationError, match="FLEETLINE_PAYMENTS_TABLE"):
        resources.get("PaymentsTable")
