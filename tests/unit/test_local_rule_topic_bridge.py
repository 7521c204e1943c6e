"""The local runner bridges a rule target that is an SNS topic (the emulator's EventBridge
cannot deliver to SNS: PutEvents answers HTTP 500 when a matching rule targets a topic)."""

from pathlib import Path

from shared.local import StackFacts, load_template, plan_gaps

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"


def facts(template: dict) -> StackFacts:
    physical = {
        lid: f"arn:aws:sns:us-east-1:{ACCOUNT}:fl-{lid}"
        for lid, r in template["Resources"].items() if r["Type"] == "AWS::SNS::Topic"
    }
    physical.update({
        lid: f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/fl-{lid}"
        for lid, r in template["Resources"].items() if r["Type"] == "AWS::SQS::Queue"
    })
    return StackFacts.from_stack_id(f"arn:aws:cloudformation:us-east-1:{ACCOUNT}:stack/fl/x",
                                    stack_name="fl", physical=physical)


def test_only_topic_targets_are_bridged_with_their_retry_policy_and_dlq() -> None:
    template = {"Resources": {
        "Bus": {"Type": "AWS::Events::EventBus", "Properties": {"Name": "fl-bus"}},
        "Topic": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": "fl-topic"}},
        "Queue": {"Type": "AWS::SQS::Queue", "Properties": {}},
        "Dlq": {"Type": "AWS::SQS::Queue", "Properties": {}},
        "ToTopic": {"Type": "AWS::Events::Rule", "Properties": {
            "Name": "fl-to-topic", "EventBusName": {"Fn::GetAtt": ["Bus", "Name"]},
            "Targets": [{"Id": "T", "Arn": {"Ref": "Topic"},
                         "RetryPolicy": {"MaximumRetryAttempts": 3},
                         "DeadLetterConfig": {"Arn": {"Fn::GetAtt": ["Dlq", "Arn"]}}},
                        {"Id": "Q", "Arn": {"Fn::GetAtt": ["Queue", "Arn"]}}]}},
        "ToQueue": {"Type": "AWS::Events::Rule", "Properties": {
            "Name": "fl-to-queue", "EventBusName": {"Fn::GetAtt": ["Bus", "Name"]},
            "Targets": [{"Id": "Q", "Arn": {"Fn::GetAtt": ["Queue", "Arn"]}}]}},
    }}
    plan = plan_gaps(template, facts(template))
    assert plan.problems == {}
    (bridge,) = plan.rule_topic_targets
    assert (bridge.logical_id, bridge.rule_name, bridge.bus_name, bridge.target_id) == (
        "ToTopic", "fl-to-topic", "fl-bus", "T")
    assert bridge.topic_arn == f"arn:aws:sns:us-east-1:{ACCOUNT}:fl-Topic"
    assert bridge.bridge_queue == "fl-local-ToTopic-T"
    assert bridge.target["RetryPolicy"] == {"MaximumRetryAttempts": 3}
    assert bridge.target["DeadLetterConfig"] == {"Arn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:fl-Dlq"}


def test_the_application_template_bridges_the_dashboard_feed_only() -> None:
    template = load_template(ROOT / "deploy" / "template.yaml")
    plan = plan_gaps(template, facts(template), statemachines_dir=ROOT / "deploy" / "statemachines")
    rules = {lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::Events::Rule"}
    assert not rules & set(plan.problems), {r: plan.problems[r] for r in rules & set(plan.problems)}
    assert [(b.logical_id, b.target_id) for b in plan.rule_topic_targets] == [
        ("DashboardRule", "DashboardFeedTopic")]
