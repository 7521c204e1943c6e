"""The values compose.yaml gives its containers are the ones the emulator deployment makes:
deploy the template (as the glue container does), then compare each deployed task
definition's environment, and every predicted physical id, with the prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.aws import AwsClients
from shared.cloudformation import load_template
from shared.deployment import describe
from shared.local import compose_services, predicted_facts
from shared.local._deploy import deploy_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "template.yaml"

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


async def test_the_prediction_is_what_the_emulator_deploys(aws: AwsClients) -> None:
    template: dict[str, Any] = load_template(TEMPLATE)
    await deploy_template(aws, template=template, template_path=TEMPLATE,
                          statemachines_dir=TEMPLATE.parent / "statemachines",
                          stack_name="fleetline")
    deployed = await describe(aws, "fleetline")
    physical = {r.logical_id: r.physical_id for r in deployed.stack_resources}
    facts = predicted_facts(template)
    wrong = {
        logical: (predicted, physical.get(logical))
        for logical, predicted in facts.physical.items()
        # The emulator lists buses without a physical id (docs/deploy.md); their names are
        # what rules and processes use, and the rendering resolves them from the template.
        if template["Resources"][logical]["Type"] != "AWS::Events::EventBus"
        and physical.get(logical) != predicted
    }
    assert not wrong
    ecs = await aws.client("ecs")
    services = compose_services(template, facts)
    assert len(services) >= 10
    for service in services:
        resource = template["Resources"][service.logical_id]
        task = physical[resource["Properties"]["TaskDefinition"]["Ref"]]
        definition = (await ecs.describe_task_definition(taskDefinition=task))["taskDefinition"]
        worker = next(c for c in definition["containerDefinitions"]
                      if list(c["command"]) == list(service.command))
        environment = {e["name"]: e["value"] for e in worker.get("environment", [])}
        assert environment == service.environment, service.name
    # The names the emulator deployment gave: the outputs the processes get.
    assert deployed.outputs["ClaimCheckBucket"] == "fleetline-claimcheckbucket"
