"""Planning what the emulator skips, from a parsed template and the deployed stack's ids."""

import json
from pathlib import Path

import pytest

from shared.cloudformation import TemplateError, load_template
from shared.local import StackFacts, plan_gaps
from shared.local._template import resolve

TEMPLATE = Path(__file__).parents[1] / "integration" / "local_up" / "template.yaml"
ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def facts() -> StackFacts:
    physical = {
        "WorkDlq": f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/s-work-dlq",
        "WorkQueue": f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/s-work",
        "AlarmQueue": f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/s-alarms",
        "AlarmTopic": f"arn:aws:sns:us-east-1:{ACCOUNT}:s-alarms",
        "Outbox": "s-outbox",
        "Telemetry": "s-telemetry",
        "Role": "s-Role-X",
        "ApiFunction": "s-api",
        "WorkFunction": "s-work",
        "Saga": f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:s-saga",
        "Rollout": f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:s-rollout",
        "Cluster": "s",
        "SleeperTask": f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/s-sleeper:1",
        "SleeperService": f"arn:aws:ecs:us-east-1:{ACCOUNT}:service/s/s-SleeperService-Y",
    }
    return StackFacts.from_stack_id(
        f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/s/abc",
        stack_name="s",
        physical=physical,
        attributes={"Outbox.StreamArn": "arn:aws:dynamodb:us-east-1:1:table/s-outbox/stream/t"},
    )


def test_subscriptions_carry_filter_policy_and_raw_delivery(
    template: dict, facts: StackFacts
) -> None:
    plan = plan_gaps(template, facts)
    (sub,) = plan.subscriptions
    assert sub.topic_arn == f"arn:aws:sns:us-east-1:{ACCOUNT}:s-alarms"
    assert sub.endpoint == f"arn:aws:sqs:us-east-1:{ACCOUNT}:s-alarms"
    assert json.loads(sub.attributes["FilterPolicy"]) == {"severity": ["critical"]}
    assert sub.attributes["RawMessageDelivery"] == "true"


def test_state_machine_definition_has_substitutions_resolved(
    template: dict, facts: StackFacts
) -> None:
    machines = {m.logical_id: m for m in plan_gaps(template, facts).state_machines}
    machine = machines["Saga"]
    assert machine.name == "s-saga"
    assert machine.arn == facts.physical["Saga"]
    assert machine.role_arn == f"arn:aws:iam::{ACCOUNT}:role/s-Role-X"
    assert json.loads(machine.definition)["States"]["Done"]["Result"] == facts.physical["WorkQueue"]


def test_a_distributed_map_is_rewritten_with_its_processor_and_the_map_runs_queue(
    template: dict, facts: StackFacts
) -> None:
    plan = plan_gaps(template, facts)
    machines = {m.logical_id: m for m in plan.state_machines}
    assert machines["Saga"].processors == ()  # nothing to rewrite
    rollout = machines["Rollout"]
    wave = json.loads(rollout.definition)["States"]["Wave"]
    assert wave["Type"] == "Task"
    assert wave["Parameters"]["QueueUrl"] == (
        f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/s-local-map-runs")
    run = json.loads(wave["Parameters"]["MessageBody"]["MapRun"])
    assert run["ItemSelector"]["queue"] == facts.physical["WorkQueue"]  # substituted
    (processor,) = rollout.processors
    assert (processor.logical_id, processor.name, processor.type) == (
        "Rollout/Wave", "s-rollout-Wave", "EXPRESS")
    assert processor.arn == f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:s-rollout-Wave"
    assert processor.role_arn == rollout.role_arn
    assert plan.map_runs_queue == "s-local-map-runs"
    without = dict(template, Resources={
        k: v for k, v in template["Resources"].items() if k != "Rollout"})
    assert plan_gaps(without, facts).map_runs_queue is None


def test_a_definition_the_local_runner_cannot_run_is_a_problem_not_a_crash(
    template: dict, facts: StackFacts
) -> None:
    broken = json.loads(json.dumps(template))
    broken["Resources"]["Rollout"]["Properties"]["Definition"]["QueryLanguage"] = "JSONata"
    plan = plan_gaps(broken, facts)
    assert "JSONata" in plan.problems["Rollout"]
    assert [m.logical_id for m in plan.state_machines] == ["Saga"]


def test_triggers_apis_pipes_services_and_ttl(template: dict, facts: StackFacts) -> None:
    plan = plan_gaps(template, facts)
    mapping, stream_mapping = plan.event_source_mappings
    assert mapping.function.handler == "tests.integration.local_up.handlers.work"
    assert mapping.source_arn == f"arn:aws:sqs:us-east-1:{ACCOUNT}:s-work"
    assert mapping.report_batch_item_failures
    assert stream_mapping.source_arn == f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/s-telemetry"
    assert (stream_mapping.batch_size, stream_mapping.starting_position) == (100, "TRIM_HORIZON")
    assert not stream_mapping.report_batch_item_failures
    (api,) = plan.http_apis
    assert [(r.route_key, r.function.name) for r in api.routes] == [("POST /echo/{name}", "s-api")]
    (pipe,) = plan.pipes
    assert pipe.source_arn == facts.attributes["Outbox.StreamArn"]
    assert pipe.target_arn == f"arn:aws:events:us-east-1:{ACCOUNT}:event-bus/s-orders"
    (service,) = plan.services
    assert service.task_definition == facts.physical["SleeperTask"]
    assert [(t.table_name, t.attribute) for t in plan.time_to_live] == [("s-outbox", "expires_at")]
    (policy,) = plan.queue_policies
    assert policy.queue_urls == (facts.physical["WorkQueue"],)
    assert set(plan.functions()) == {"ApiFunction", "WorkFunction"}


def test_intrinsics_resolve_against_the_stack(template: dict, facts: StackFacts) -> None:
    assert (
        resolve({"Fn::Sub": "${AWS::StackName}-${AWS::Region}"}, template, facts) == "s-us-east-1"
    )
    assert (
        resolve({"Fn::Sub": ["${X}/${WorkQueue.Arn}", {"X": {"Ref": "Outbox"}}]}, template, facts)
        == f"s-outbox/arn:aws:sqs:us-east-1:{ACCOUNT}:s-work"
    )
    assert resolve({"Fn::Join": ["-", ["a", {"Ref": "Cluster"}]]}, template, facts) == "a-s"
    assert resolve({"Fn::Select": [1, {"Fn::Split": [",", "a,b"]}]}, template, facts) == "b"
    assert resolve({"Fn::Sub": "${!Literal}"}, template, facts) == "${Literal}"
    assert resolve([{"Ref": "AWS::NoValue"}, 1], template, facts) == [1]
    assert resolve({"Fn::GetAtt": ["OrdersBus", "Name"]}, template, facts) == "s-orders"


def test_unresolvable_names_fail_with_the_name(template: dict, facts: StackFacts) -> None:
    with pytest.raises(TemplateError, match="Nope"):
        resolve({"Ref": "Nope"}, template, facts)
    with pytest.raises(TemplateError, match=r"Telemetry\.ShardIds"):
        resolve({"Fn::GetAtt": ["Telemetry", "ShardIds"]}, template, facts)
    with pytest.raises(TemplateError, match="Fn::Transform"):
        resolve({"Fn::Transform": {}}, template, facts)


def test_invalid_template_is_refused_with_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("Resources: [1, 2\n")
    with pytest.raises(TemplateError, match="is invalid"):
        load_template(bad)
    with pytest.raises(TemplateError, match="not found"):
        load_template(tmp_path / "missing.yaml")


def test_plain_http_denials_are_left_out_of_local_bucket_policies() -> None:
    from shared.local._gaps import without_plain_http_denials

    deny_http = {"Sid": "DenyPlainHttp", "Effect": "Deny", "Principal": {"AWS": "1"},
                 "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/*",
                 "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
    allow = {"Sid": "Read", "Effect": "Allow", "Principal": {"AWS": "1"},
             "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}
    document = {"Version": "2012-10-17", "Statement": [deny_http, allow]}
    assert without_plain_http_denials(document) == {"Version": "2012-10-17",
                                                    "Statement": [allow]}
    other_deny = {**deny_http, "Condition": {"Bool": {"aws:SecureTransport": "true"}}}
    assert without_plain_http_denials({"Statement": [other_deny]}) == {
        "Statement": [other_deny]}
    assert without_plain_http_denials("{}") == "{}"
