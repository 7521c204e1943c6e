"""Residency zones (`shared.zones`): the one table Python reads, equal to the template's
`ResidencyZones` mapping, and the template's global endpoint wiring for the device-events
bus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.cloudformation import load_template
from shared.errors import ConfigurationError
from shared.zones import ZONES, ZoneRole, parse_stack

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


def test_a_stack_is_named_by_its_zone_and_role() -> None:
    assert parse_stack("us") == (ZONES["us"], ZoneRole.PRIMARY)
    assert parse_stack(" eu:secondary") == (ZONES["eu"], ZoneRole.SECONDARY)
    with pytest.raises(ConfigurationError, match="unknown zone 'ap'"):
        parse_stack("ap")
    with pytest.raises(ConfigurationError, match="primary or secondary"):
        parse_stack("eu:tertiary")


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
    endpoint_id = {"Fn::GetAtt": ["DeviceEventsEndpoint", "EndpointId"]}
    through = {"Fn::If": ["HasGlobalEndpoint", endpoint_id, {"Ref": "AWS::NoValue"}]}
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


def test_up_runs_one_stack_per_zone_each_in_its_region_with_its_own_names() -> None:
    from shared.local._up import UpConfig, _targets

    alone = _targets(UpConfig(), "eu-west-1")
    assert [(t.zone, t.region, t.prefix, t.move_ports) for t in alone] == [
        ("eu", "eu-west-1", "", False)]
    two = _targets(UpConfig(zones=("eu", "us", "eu:secondary"), api_port=9000), "ignored")
    assert [(t.zone, t.role, t.region, t.prefix) for t in two] == [
        ("eu", "primary", "eu-west-1", "eu-"), ("us", "primary", "us-east-1", "us-"),
        ("eu", "secondary", "eu-west-3", "eu-secondary-")]
    assert [t.parameters["ResidencyZone"] for t in two] == ["eu", "us", "eu"]
    assert [t.parameters["ZoneRole"] for t in two] == ["primary", "primary", "secondary"]
    # Only the first stack keeps the asked ports; the others' servers move to free ones.
    assert [(t.api_port, t.move_ports) for t in two] == [(9000, False), (0, True), (0, True)]
    on_aws = _targets(UpConfig(zones=("eu", "us", "eu:secondary"), real_aws=True), "x")
    assert [(t.zone, t.role) for t in on_aws] == [
        ("eu", "primary"), ("us", "primary"), ("eu", "secondary"), ("us", "secondary")]
    for bad in (("mars",), ("eu:tertiary",), ("eu", "eu")):
        with pytest.raises(ConfigurationError):
            _targets(UpConfig(zones=bad), "eu-west-1")


def test_the_state_as_one_zones_stack_sees_it() -> None:
    from shared.local._state import ChildRecord, StackRecord, UpState

    state = UpState(
        stack_name="fleetline", endpoint="http://127.0.0.1:1", supervisor_pid=1,
        region="eu-west-1",
        stacks=(StackRecord(zone="eu", role="primary", region="eu-west-1",
                            stack_name="fleetline", prefix="eu-", urls={"eu-Api": "http://a"}),
                StackRecord(zone="us", role="primary", region="us-east-1",
                            stack_name="fleetline", prefix="us-", urls={"us-Api": "http://b"})),
        children=(ChildRecord(name="emulator", kind="emulator", pid=2),
                  ChildRecord(name="eu-Worker", kind="service", pid=3),
                  ChildRecord(name="us-Worker", kind="service", pid=4)),
    )
    assert state.zones() == ["eu", "us"]
    us = state.for_zone("us")
    assert (us.region, us.urls) == ("us-east-1", {"us-Api": "http://b"})
    assert [c.name for c in us.children] == ["emulator", "us-Worker"]
    assert state.for_zone(None).region == "eu-west-1"
    assert UpState.from_json(state.to_json()) == state
    with pytest.raises(ConfigurationError, match="eu, us"):
        state.for_zone("eu:secondary")


async def test_publishing_through_a_global_endpoint_is_signed_with_sigv4a(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PutEvents with EndpointId goes to <id>.endpoint.events.amazonaws.com signed with SigV4a
    # for every Region ("*"): botocore needs the AWS CRT for that (botocore[crt]). The request
    # is stopped before it leaves the machine; nothing answers it.
    from aiobotocore.session import get_session

    from shared.aws import AwsClients, ClientSettings
    from shared.outbox import PublisherConfig
    from shared.outbox._publisher import EventPublisher

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EVENTS"):  # AWS's own endpoint
        monkeypatch.delenv(name, raising=False)
    session = get_session()
    session.set_credentials("AKIDEXAMPLE", "not-a-secret")
    seen: dict[str, Any] = {}

    def capture(request: Any, **_: Any) -> None:
        seen.update(url=request.url, auth=request.headers["Authorization"],
                    regions=request.headers["X-Amz-Region-Set"])
        raise ConnectionError("stopped before sending")

    session.register("before-send.events.PutEvents", capture)
    async with AwsClients(ClientSettings(region="eu-west-1"), session=session) as aws:
        publisher = EventPublisher(aws, PublisherConfig(bus_name="b", endpoint_id="abcde.veo",
                                                        max_attempts=1))
        report = await publisher.publish([{"id": "e-1", "source": "s", "type": "d", "data": {}}])
    assert not report.ok
    assert seen["url"] == "https://abcde.veo.endpoint.events.amazonaws.com/"
    assert seen["auth"].startswith(b"AWS4-ECDSA-P256-SHA256 ")
    assert seen["regions"] == b"*"


@pytest.mark.parametrize(("role", "endpoint"), [("primary", "enabled"), ("primary", "disabled"),
                                                ("secondary", "enabled")])
def test_the_local_runner_resolves_the_zone_wiring_as_cloudformation_would(
    template: dict[str, Any], role: str, endpoint: str,
) -> None:
    from shared.local import StackFacts
    from shared.local._template import condition_holds, resolve

    facts = StackFacts.from_stack_id(
        "arn:aws:cloudformation:eu-west-1:123456789012:stack/fleetline/x",
        stack_name="fleetline", physical={},
        parameters={"ResidencyZone": "eu", "ZoneRole": role, "GlobalEndpoint": endpoint})
    resources = template["Resources"]
    has_endpoint = condition_holds(resources["DeviceEventsEndpoint"], template, facts)
    assert has_endpoint is (role == "primary" and endpoint == "enabled")
    assert condition_holds(resources["DeviceEventsBus"], template, facts)  # no condition
    statement = next(s for s in resources["DevicesOutboxPipeRole"]["Properties"]["Policies"][0]
                     ["PolicyDocument"]["Statement"] if s["Action"] == "events:PutEvents")
    arns = resolve(statement["Resource"][1], template, facts)
    assert arns == "arn:aws:events:eu-west-3:123456789012:event-bus/fleetline-device-events"
    # the emulator has no endpoint: its id is empty, so producers publish in their Region
    ingest = resources["IotIngestFunction"]["Properties"]["Environment"]["Variables"]
    assert resolve(ingest["FLEETLINE_DEVICE_EVENTS_ENDPOINT_ID"], template, facts) == ""


def test_zones_stacks_of_one_name_get_bucket_and_role_names_of_their_region(
    template: dict[str, Any],
) -> None:
    # Buckets and roles have one namespace for all Regions: on the emulator the names it
    # fixes (shared.deployment.emulator_names) carry the Region for `up --zones`.
    from shared.deployment import emulator_names

    eu = emulator_names(template, "fleetline", region="eu-west-1")
    us = emulator_names(template, "fleetline", region="us-east-1")
    assert eu
    assert set(eu) == set(us)
    assert not {name for _, name in eu.values()} & {name for _, name in us.values()}
    assert eu["LakeBucket"] == ("BucketName", "fleetline-lakebucket-eu-west-1")
    assert emulator_names(template, "fleetline")["LakeBucket"] == (
        "BucketName", "fleetline-lakebucket")
