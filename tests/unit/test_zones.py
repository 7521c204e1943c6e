"""Residency zones (`shared.zones`): the one table Python reads, equal to the template's
`ResidencyZones` mapping, and the template's global endpoint wiring for the device-events
bus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.cloudformation import load_template
from shared.errors import ConfigurationError
from shared.zones import ZONES, ZoneRole, parse_zones, zone_of_region

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "template.yaml"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


def test_the_template_maps_the_same_zones_to_the_same_regions(template: dict[str, Any]) -> None:
    mapping = template["Mappings"]["ResidencyZones"]
    assert {name: (z["Primary"], z["Secondary"]) for name, z in mapping.items()} == {
        name: zone.regions for name, zone in ZONES.items()}
    assert sorted(template["Parameters"]["ResidencyZone"]["AllowedValues"]) == sorted(ZONES)
    assert template["Parameters"]["ZoneRole"]["AllowedValues"] == [r.value for r in ZoneRole]


def test_a_zones_regions_are_its_own() -> None:
    regions = [region for zone in ZONES.values() for region in zone.regions]
    assert len(regions) == len(set(regions))
    assert ZONES["eu"].regions == ("eu-west-1", "eu-west-3")
    assert ZONES["us"].region(ZoneRole.SECONDARY) == "us-east-2"


def test_parse_zones_keeps_order_once_each_and_names_the_unknown() -> None:
    assert parse_zones("us, eu,us") == (ZONES["us"], ZONES["eu"])
    with pytest.raises(ConfigurationError, match="unknown zone 'ap'"):
        parse_zones("eu,ap")
    with pytest.raises(ConfigurationError, match="at least one"):
        parse_zones(" , ")


def test_zone_of_region() -> None:
    assert zone_of_region("eu-west-3") == (ZONES["eu"], ZoneRole.SECONDARY)
    assert zone_of_region("us-east-1") == (ZONES["us"], ZoneRole.PRIMARY)
    assert zone_of_region("ap-south-1") is None


def test_the_device_events_endpoint_exists_in_the_primary_stack_only(
    template: dict[str, Any],
) -> None:
    resources = template["Resources"]
    endpoint = resources["DeviceEventsEndpoint"]
    assert endpoint["Condition"] == "HasGlobalEndpoint"
    properties = endpoint["Properties"]
    assert properties["ReplicationConfig"] == {"State": "ENABLED"}
    failover = properties["RoutingConfig"]["FailoverConfig"]
    assert failover["Secondary"]["Route"] == {
        "Fn::FindInMap": ["ResidencyZones", {"Ref": "ResidencyZone"}, "Secondary"]}
    assert "DeviceEventsEndpointHealthCheck" in str(failover["Primary"]["HealthCheck"])
    check = resources["DeviceEventsEndpointHealthCheck"]["Properties"]["HealthCheckConfig"]
    assert check["Type"] == "CLOUDWATCH_METRIC"
    assert check["AlarmIdentifier"]["Name"] == {"Ref": "DeviceEventsEndpointHealthAlarm"}
    buses = properties["EventBuses"]
    assert buses[0] == {"EventBusArn": {"Fn::GetAtt": ["DeviceEventsBus", "Arn"]}}
    assert "${AWS::StackName}-device-events" in str(buses[1])  # the standby's bus: same name
    for logical in ("DeviceEventsReplicationRole", "DeviceEventsEndpointHealthAlarm",
                    "DeviceEventsEndpointHealthCheck"):
        assert resources[logical]["Condition"] == "HasGlobalEndpoint"


def test_producers_publish_through_the_endpoint_and_may_reach_the_standby_bus(
    template: dict[str, Any],
) -> None:
    resources = template["Resources"]
    through = {"Fn::If": ["HasGlobalEndpoint", {"Fn::GetAtt": ["DeviceEventsEndpoint", "EndpointId"]},
                          {"Ref": "AWS::NoValue"}]}
    pipe = resources["DevicesOutboxPipe"]["Properties"]
    assert pipe["TargetParameters"]["EventBridgeEventBusParameters"]["EndpointId"] == through
    ingest = resources["IotIngestFunction"]["Properties"]["Environment"]["Variables"]
    assert ingest["FLEETLINE_DEVICE_EVENTS_ENDPOINT_ID"] == template["Outputs"][
        "DeviceEventsEndpointId"]["Value"]
    for role in ("DevicesOutboxPipeRole", "IotIngestFunctionRole"):
        statements = [s for p in resources[role]["Properties"]["Policies"]
                      for s in p["PolicyDocument"]["Statement"]
                      if s["Action"] == "events:PutEvents"]
        assert len(statements) == 1, role
        assert "${AWS::StackName}-device-events" in str(statements[0]["Resource"]), role
