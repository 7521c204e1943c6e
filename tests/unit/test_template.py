"""The template's own invariants (deploy/template.yaml), read with the one template loader
(`shared.cloudformation`: short-form tags in their long form, a key twice refused).

These are the rules docs/deploy.md promises: every queue has a DLQ, every rule target a retry
policy and a DLQ, every table streams/TTL/PITR/SSE, encryption everywhere, no wildcard
actions, wildcard resources only where commented, outputs and FLEETLINE_* variables agree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.cloudformation import load_template, references
from shared.config import ENV_PREFIX, resource_env_name

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "deploy" / "template.yaml"
STATEMACHINES = ROOT / "deploy" / "statemachines"

# FLEETLINE_* variables that are settings, not stack outputs.
SETTINGS_ENV = {"FLEETLINE_DRAIN_SECONDS", "FLEETLINE_DASHBOARD_HOST",
                "FLEETLINE_DASHBOARD_QUEUE_PREFIX", "FLEETLINE_LAST_SEEN_INTERVAL"}
DRAIN_SECONDS = 45

# Actions whose APIs have no resource-level permissions: the only ones allowed on "*".
WILDCARD_RESOURCE_ACTIONS = {
    "xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
    "xray:GetSamplingTargets", "states:SendTaskSuccess", "states:SendTaskFailure",
    "states:SendTaskHeartbeat", "dynamodb:ListStreams", "ecr:GetAuthorizationToken",
    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies", "logs:DescribeLogGroups",
}

# The contracts with the service helpers: ECS worker targets and Lambda handlers.
WORKERS = {
    "TelemetryWorker": "services.devices.telemetry:worker",
    "DeviceProjector": "services.devices.projection:worker",
    "Dashboard": "services.devices.dashboard:worker",
    "InventoryWorker": "services.orders.inventory:worker",
    "PaymentsWorker": "services.orders.payments:worker",
    "ShippingWorker": "services.orders.shipping:worker",
    "NotificationsWorker": "services.orders.notifications:worker",
    "OrderProjector": "services.orders.projection:worker",
    "FirmwareTasksWorker": "services.firmware.worker:tasks",
    "FirmwareAcksWorker": "services.firmware.worker:acks",
}
FUNCTIONS = {
    "IotIngestFunction": "services.devices.ingest.handler",
    "AlarmPublisherFunction": "services.devices.alarms.handler",
    "OutboxExpandFunction": "shared.outbox.pipe.handler",
    "SagaStarterFunction": "services.orders.saga_starter.handler",
    "OrdersApiFunction": "services.orders.api.handler",
}
SAGA_TASK_QUEUES = {"InventoryTasksQueue", "PaymentTasksQueue", "ShippingTasksQueue"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE_PATH)  # raises TemplateError on what cfn-lint's decoder flags


def of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def props(resource: dict[str, Any]) -> dict[str, Any]:
    return dict(resource.get("Properties", {}))


def getatt_target(value: Any) -> str | None:
    """The logical id behind `!GetAtt X.Attr`, else None."""
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        return str(target[0] if isinstance(target, list) else str(target).split(".")[0])
    return None


def dlq_ids(template: dict[str, Any]) -> set[str]:
    """Queues that something dead-letters into."""
    targets: set[str] = set()

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k in {"deadLetterTargetArn", "TargetArn", "Arn"} and key in {
                    "RedrivePolicy", "DeadLetterConfig"}:
                    t = getatt_target(v)
                    if t:
                        targets.add(t)
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)

    walk(template["Resources"])
    queues = of_type(template, "AWS::SQS::Queue")
    return {t for t in targets if t in queues}


def policy_statements(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for lid, resource in template["Resources"].items():
        p = props(resource)
        documents = []
        if resource["Type"] == "AWS::IAM::Role":
            documents = [pol["PolicyDocument"] for pol in p.get("Policies", [])]
        elif resource["Type"] in {"AWS::SQS::QueuePolicy", "AWS::S3::BucketPolicy",
                                  "AWS::SNS::TopicPolicy", "AWS::IAM::Policy",
                                  "AWS::IAM::ManagedPolicy"}:
            documents = [p["PolicyDocument"]]
        elif resource["Type"] == "AWS::KMS::Key":
            documents = [p["KeyPolicy"]]
        for document in documents:
            for statement in document["Statement"]:
                yield lid, statement


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --------------------------------------------------------------------------------- linting
@pytest.mark.slow  # cfn-lint takes 5-15 s on this template
def test_cfn_lint_reports_no_errors() -> None:
    from cfnlint.api import lint_file

    matches = lint_file(TEMPLATE_PATH)
    errors = [f"{m.rule.id} {m.linenumber}: {m.message}" for m in matches
              if m.rule.severity == "error"]
    assert errors == []


# --------------------------------------------------------------------------------- queues
@pytest.mark.slow  # checkov takes 7-15 s on this template
def test_checkov_fails_no_check_and_every_suppression_says_why(template: dict[str, Any]) -> None:
    """The policy scanner (from the tools venv, `make install`) passes the template; each check
    a resource skips is in its Metadata with the reason."""
    checkov = ROOT / ".venv" / "tools" / "bin" / "checkov"
    if not checkov.exists():
        message = "checkov is missing: `make install` puts it in .venv/tools"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        [str(checkov), "-f", str(TEMPLATE_PATH), "--framework", "cloudformation", "--quiet",
         "--compact", "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    report = json.loads(done.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0, done.stderr[-2000:]
    failed = [f"{f['check_id']} {f['resource']}: {f['check_name']}"
              for f in report["results"]["failed_checks"]]
    assert failed == []
    skips = 0
    for lid, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), (lid, skip)
            assert len(skip.get("comment", "").split()) >= 8, f"{lid} {skip['id']}: say why"
            skips += 1
    assert report["summary"]["skipped"] <= skips


def test_every_queue_that_is_not_a_dlq_redrives_to_an_existing_dlq(
    template: dict[str, Any],
) -> None:
    # Every queue the template declares. The dashboard's per-task queues are created at run
    # time, outside the template, without a DLQ by design: the test below bounds them.
    queues = of_type(template, "AWS::SQS::Queue")
    dlqs = dlq_ids(template)
    assert dlqs, "no DLQs found"
    for lid, queue in queues.items():
        if lid in dlqs:
            continue
        redrive = props(queue).get("RedrivePolicy")
        assert redrive, f"{lid} has no RedrivePolicy"
        target = getatt_target(redrive["deadLetterTargetArn"])
        assert target in queues, f"{lid} redrives to {target}, not a queue of the template"
        expected = 3 if lid in SAGA_TASK_QUEUES else 5
        assert redrive["maxReceiveCount"] == expected, lid


def test_dlqs_keep_messages_14_days_and_redrive_nowhere(template: dict[str, Any]) -> None:
    queues = of_type(template, "AWS::SQS::Queue")
    for lid in dlq_ids(template):
        p = props(queues[lid])
        assert p.get("MessageRetentionPeriod") == 1209600, lid
        assert "RedrivePolicy" not in p, lid
        assert lid.endswith("Dlq"), f"{lid}: DLQs are named <Something>Dlq"


def test_every_queue_is_encrypted(template: dict[str, Any]) -> None:
    for lid, queue in of_type(template, "AWS::SQS::Queue").items():
        p = props(queue)
        assert p.get("SqsManagedSseEnabled") is True or p.get("KmsMasterKeyId"), lid


# --------------------------------------------------------------------------------- routing
def test_every_rule_target_has_retry_policy_and_an_existing_dlq(template: dict[str, Any]) -> None:
    queues = of_type(template, "AWS::SQS::Queue")
    rules = of_type(template, "AWS::Events::Rule")
    assert rules
    for lid, rule in rules.items():
        p = props(rule)
        # Never the default bus; a GetAtt (a Ref here breaks the emulator, docs/deploy.md).
        buses = of_type(template, "AWS::Events::EventBus")
        assert getatt_target(p.get("EventBusName")) in buses, lid
        for target in p["Targets"]:
            assert {"MaximumRetryAttempts", "MaximumEventAgeInSeconds"} <= set(
                target.get("RetryPolicy", {})), f"{lid}/{target['Id']}"
            assert getatt_target(target.get("DeadLetterConfig", {}).get("Arn")) in queues, (
                f"{lid}/{target['Id']}")


def test_schedules_retry_and_dead_letter(template: dict[str, Any]) -> None:
    for lid, schedule in of_type(template, "AWS::Scheduler::Schedule").items():
        target = props(schedule)["Target"]
        assert "RetryPolicy" in target, lid
        assert "DeadLetterConfig" in target, lid


def test_queues_fed_by_rules_or_topics_have_a_queue_policy_naming_the_source(
    template: dict[str, Any],
) -> None:
    allowed: dict[str, set[str]] = {}
    for policy in of_type(template, "AWS::SQS::QueuePolicy").values():
        p = props(policy)
        sources: set[str] = set()
        for statement in p["PolicyDocument"]["Statement"]:
            sources |= references(statement.get("Condition", {}))
        for q in p["Queues"]:
            allowed.setdefault(q["Ref"], set()).update(sources)
    for lid, rule in of_type(template, "AWS::Events::Rule").items():
        for target in props(rule)["Targets"]:
            for arn in (target["Arn"], target["DeadLetterConfig"]["Arn"]):
                queue = getatt_target(arn)
                if queue in of_type(template, "AWS::SQS::Queue"):
                    assert lid in allowed.get(queue, set()), f"{queue} does not admit {lid}"
    for lid, sub in of_type(template, "AWS::SNS::Subscription").items():
        p = props(sub)
        queue = getatt_target(p["Endpoint"])
        assert queue is not None
        assert p["TopicArn"]["Ref"] in allowed.get(queue, set()), f"{queue} does not admit {lid}"
        assert p.get("FilterPolicy"), f"{lid} has no filter policy"


def test_topics_fed_by_rules_admit_only_those_rules(template: dict[str, Any]) -> None:
    topics = of_type(template, "AWS::SNS::Topic")
    admitted: dict[str, set[str]] = {}
    for policy in of_type(template, "AWS::SNS::TopicPolicy").values():
        p = props(policy)
        for statement in p["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            assert as_list(statement["Action"]) == ["sns:Publish"]
            sources = references(statement.get("Condition", {}))
            assert sources, "a topic policy statement without a source condition"
            for topic in p["Topics"]:
                admitted.setdefault(topic["Ref"], set()).update(sources)
    feeding: dict[str, set[str]] = {}
    for lid, rule in of_type(template, "AWS::Events::Rule").items():
        for target in props(rule)["Targets"]:
            arn = target["Arn"]
            if isinstance(arn, dict) and arn.get("Ref") in topics:
                feeding.setdefault(arn["Ref"], set()).add(lid)
    assert feeding, "no rule targets a topic: the check would pass vacuously"
    for topic, rules in feeding.items():
        assert admitted.get(topic) == rules, f"{topic} must admit {sorted(rules)} only"


def test_dashboard_task_queues_are_the_one_bounded_exception(template: dict[str, Any]) -> None:
    """The dashboard creates one queue per task at run time (SNS fan-out, issue 4); they have
    no DLQ and are not in the template. Bound that exception: only the dashboard's role may
    create queues, only with its configured prefix, and may not send to them (only the feed
    topic sends); it subscribes to the feed topic only."""
    task = props(template["Resources"]["DashboardTaskDefinition"])
    env = {e["Name"]: e["Value"] for e in task["ContainerDefinitions"][0]["Environment"]}
    prefix = env["FLEETLINE_DASHBOARD_QUEUE_PREFIX"]["Fn::Sub"]
    assert prefix == "${AWS::StackName}-dashboard-task-"
    assert env["FLEETLINE_DASHBOARD_FEED_TOPIC"] == {"Ref": "DashboardFeedTopic"}
    creators = set()
    for role, statement in policy_statements(template):
        actions = set(as_list(statement.get("Action")))
        if "sqs:CreateQueue" in actions or "sqs:DeleteQueue" in actions:
            creators.add(role)
            resources = as_list(statement["Resource"])
            assert resources == [{"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:"
                                             "${AWS::AccountId}:" + prefix + "*"}], role
            assert "sqs:SendMessage" not in actions, role
        if role == "DashboardTaskRole" and actions & {"sns:Subscribe", "sns:Unsubscribe"}:
            assert as_list(statement["Resource"]) == [{"Ref": "DashboardFeedTopic"}]
    assert creators == {"DashboardTaskRole"}
    rule_targets = [t["Arn"] for t in props(template["Resources"]["DashboardRule"])["Targets"]]
    assert rule_targets == [{"Ref": "DashboardFeedTopic"}]


def test_buses_are_archived_30_days(template: dict[str, Any]) -> None:
    archived = {getatt_target(props(a)["SourceArn"]): props(a)["RetentionDays"]
                for a in of_type(template, "AWS::Events::Archive").values()}
    assert archived == {bus: 30 for bus in of_type(template, "AWS::Events::EventBus")}


# --------------------------------------------------------------------------------- storage
def test_every_table_has_streams_ttl_pitr_and_sse(template: dict[str, Any]) -> None:
    tables = of_type(template, "AWS::DynamoDB::Table")
    assert len(tables) >= 9
    for lid, table in tables.items():
        p = props(table)
        assert p["BillingMode"] == "PAY_PER_REQUEST", lid
        assert p["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES", lid
        assert p["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}, lid
        assert p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, lid
        assert p["SSESpecification"]["SSEEnabled"] is True, lid


def test_stream_topics_and_buckets_are_encrypted(template: dict[str, Any]) -> None:
    for lid, stream in of_type(template, "AWS::Kinesis::Stream").items():
        assert props(stream)["StreamEncryption"]["EncryptionType"] == "KMS", lid
    for lid, topic in of_type(template, "AWS::SNS::Topic").items():
        assert props(topic).get("KmsMasterKeyId"), lid
    for lid, bucket in of_type(template, "AWS::S3::Bucket").items():
        assert props(bucket).get("BucketEncryption"), lid


# --------------------------------------------------------------------------------- IAM
def test_no_allow_statement_has_a_wildcard_action(template: dict[str, Any]) -> None:
    for lid, statement in policy_statements(template):
        if statement["Effect"] != "Allow":
            continue
        for action in as_list(statement["Action"]):
            assert "*" not in str(action), f"{lid}: wildcard action {action}"


def test_wildcard_resources_only_for_apis_without_resource_permissions(
    template: dict[str, Any],
) -> None:
    for lid, statement in policy_statements(template):
        if statement["Effect"] != "Allow" or "*" not in as_list(statement.get("Resource")):
            continue
        if template["Resources"][lid]["Type"] == "AWS::KMS::Key":
            continue  # in a key policy "*" is the key itself
        actions = set(as_list(statement["Action"]))
        assert actions <= WILDCARD_RESOURCE_ACTIONS, f"{lid}: {actions - WILDCARD_RESOURCE_ACTIONS}"


def test_every_wildcard_resource_line_is_commented() -> None:
    lines = TEMPLATE_PATH.read_text().splitlines()
    star = re.compile(r"Resource:\s*['\"]\*['\"]")
    wildcard_lines = [i for i, line in enumerate(lines) if star.search(line)]
    assert wildcard_lines
    for i in wildcard_lines:
        comment = []
        j = i - 1
        while lines[j].strip().startswith("#"):  # the comment block right above
            comment.insert(0, lines[j].strip())
            j -= 1
        assert comment, f"line {i + 1}: Resource \"*\" without a comment above"
        assert comment[0].startswith("# wildcard:"), f"line {i + 1}: not `# wildcard: <reason>`"


def test_one_role_per_task_and_function(template: dict[str, Any]) -> None:
    task_roles = [getatt_target(props(t)["TaskRoleArn"])
                  for t in of_type(template, "AWS::ECS::TaskDefinition").values()]
    function_roles = [getatt_target(props(f)["Role"])
                      for f in of_type(template, "AWS::Lambda::Function").values()]
    every = task_roles + function_roles
    assert len(set(every)) == len(every), "a role is shared between processes"


# --------------------------------------------------------------------------------- processes
def test_workers_run_the_contracted_targets_with_a_collector_and_drain_time(
    template: dict[str, Any],
) -> None:
    defaults = template["Parameters"]
    assert defaults["CollectorImage"]["Default"].startswith(
        "public.ecr.aws/aws-observability/aws-otel-collector")
    seen = {}
    for lid, task in of_type(template, "AWS::ECS::TaskDefinition").items():
        containers = {c["Name"]: c for c in props(task)["ContainerDefinitions"]}
        worker, collector = containers["worker"], containers["otel-collector"]
        assert worker["Command"][:3] == ["python", "-m", "shared.hosts.worker"], lid
        seen[lid.removesuffix("TaskDefinition")] = worker["Command"][3]
        env = {e["Name"]: e["Value"] for e in worker["Environment"]}
        assert env["FLEETLINE_DRAIN_SECONDS"] == str(DRAIN_SECONDS), lid
        assert worker["StopTimeout"] > DRAIN_SECONDS, lid
        assert worker["LogConfiguration"]["LogDriver"] == "awslogs", lid
        assert collector["Image"] == {"Ref": "CollectorImage"}, lid
        assert props(task)["RequiresCompatibilities"] == ["FARGATE"], lid
    assert seen == WORKERS
    services = {getatt_target(props(s)["TaskDefinition"]) or props(s)["TaskDefinition"]["Ref"]
                for s in of_type(template, "AWS::ECS::Service").values()}
    assert services == {f"{w}TaskDefinition" for w in WORKERS}


def test_functions_run_the_contracted_handlers_from_the_artifact(template: dict[str, Any]) -> None:
    seen = {}
    for lid, function in of_type(template, "AWS::Lambda::Function").items():
        p = props(function)
        assert p["Runtime"] == "python3.12", lid
        assert p["Code"] == {"S3Bucket": {"Ref": "ArtifactBucket"}, "S3Key": {"Ref": "CodeKey"}}
        seen[lid] = p["Handler"]
    assert seen == FUNCTIONS


def process_environments(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for lid, task in of_type(template, "AWS::ECS::TaskDefinition").items():
        for container in props(task)["ContainerDefinitions"]:
            yield lid, {e["Name"]: e["Value"] for e in container.get("Environment", [])}
    for lid, function in of_type(template, "AWS::Lambda::Function").items():
        yield lid, dict(props(function).get("Environment", {}).get("Variables", {}))


def test_every_fleetline_variable_is_an_output_with_the_same_value(
    template: dict[str, Any],
) -> None:
    outputs = {resource_env_name(k): v["Value"] for k, v in template["Outputs"].items()}
    count = 0
    for lid, env in process_environments(template):
        for name, value in env.items():
            if not name.startswith(ENV_PREFIX) or name in SETTINGS_ENV:
                continue
            count += 1
            assert name in outputs, f"{lid}: {name} is no stack output"
            assert value == outputs[name], f"{lid}: {name} differs from its output"
    assert count > 20


def test_secrets_never_ride_in_an_environment(template: dict[str, Any]) -> None:
    for lid, env in process_environments(template):
        assert not [n for n in env if "SECRET" in n], f"{lid}: use the container's Secrets"
    dashboard = props(template["Resources"]["DashboardTaskDefinition"])
    secrets = dashboard["ContainerDefinitions"][0]["Secrets"]
    assert secrets == [{"Name": "FLEETLINE_DASHBOARD_SECRET",
                        "ValueFrom": {"Ref": "DashboardSecret"}}]


def test_every_output_names_a_resource_or_parameter_it_is_keyed_after(
    template: dict[str, Any],
) -> None:
    known = set(template["Resources"]) | set(template["Parameters"])
    # Resources the emulator's CloudFormation skips (`fleetline up` creates them through the
    # API) are output by the physical name the template gives them, not by Ref.
    by_name = {"ReadingsDeliveryStream": "DeliveryStreamName",
               "AnalyticsWorkGroup": "Name"}
    for key, output in template["Outputs"].items():
        refs = references(output["Value"])
        if key in by_name:
            assert output["Value"] == props(template["Resources"][key])[by_name[key]]
            continue
        if key == "LakeDatabase":
            assert output["Value"] == props(template["Resources"][key])["DatabaseInput"]["Name"]
            continue
        assert refs, f"output {key} refers to nothing"
        assert refs <= known, f"output {key}: {refs - known}"
        assert any(key in {r, f"{r}Name", f"{r}Arn", f"{r}Url", f"{r}Id"} for r in refs), (
            f"output {key} is not keyed after {refs}")


def test_physical_names_carry_the_stack_name(template: dict[str, Any]) -> None:
    name_props = {"QueueName", "TableName", "Name", "TopicName", "FunctionName", "ServiceName",
                  "Family", "ClusterName", "StateMachineName", "ArchiveName", "AlarmName",
                  "LogGroupName"}
    checked = 0
    for lid, resource in template["Resources"].items():
        for prop, value in props(resource).items():
            if prop in name_props and resource["Type"] not in {
                    "AWS::Lambda::Permission", "AWS::Lambda::EventSourceMapping"}:
                text = value.get("Fn::Sub") if isinstance(value, dict) else value
                assert isinstance(text, str), f"{lid}.{prop}"
                assert "${AWS::StackName}" in text, f"{lid}.{prop}"
                checked += 1
    assert checked > 50


# --------------------------------------------------------------------------------- alarms
def test_alarms_cover_dlqs_queue_age_iterator_age_and_failed_executions(
    template: dict[str, Any],
) -> None:
    alarms = [props(a) for a in of_type(template, "AWS::CloudWatch::Alarm").values()]

    def watched(metric: str) -> set[str]:
        return {
            ref for a in alarms if a["MetricName"] == metric
            for d in a["Dimensions"] for ref in references(d["Value"])
        }

    depth = watched("ApproximateNumberOfMessagesVisible")
    assert dlq_ids(template) <= depth
    work_queues = {q for q in of_type(template, "AWS::SQS::Queue") if q not in dlq_ids(template)}
    sinks = {"TelemetryFailureQueue", "FirmwareAcksFailureQueue"}  # depth alarms instead
    assert sinks <= depth
    assert work_queues - sinks <= watched("ApproximateAgeOfOldestMessage")
    streams = {"TelemetryStream", "FirmwareAcksStream"}
    assert streams <= watched("GetRecords.IteratorAgeMilliseconds")
    assert {"OrderSagaStateMachine", "FirmwareRolloutStateMachine"} <= watched("ExecutionsFailed")
    for a in alarms:
        assert a["AlarmActions"] == [{"Ref": "OpsAlertsTopic"}]


# --------------------------------------------------------------------------------- saga
def test_state_machine_substitutions_match_the_definition_placeholders(
    template: dict[str, Any],
) -> None:
    machines = of_type(template, "AWS::StepFunctions::StateMachine")
    assert machines
    for lid, machine in machines.items():
        p = props(machine)
        key = p["DefinitionS3Location"]["Key"]["Fn::Sub"]
        path = STATEMACHINES / key.split("/")[-1]
        text = path.read_text()
        document = json.loads(text)
        assert "QueryLanguage" not in document or document["QueryLanguage"] == "JSONPath"
        placeholders = set(re.findall(r"\$\{(\w+)\}", text))
        assert placeholders == set(p["DefinitionSubstitutions"]), lid


def test_every_queue_consumer_may_dead_letter_to_that_queues_dlq(
    template: dict[str, Any],
) -> None:
    """The runtime sends a permanently failing message to the DLQ itself, with its reason
    (shared.consumers DeadLetterMode.SEND), so a role that receives from a queue must be
    allowed to send to that queue's DLQ; otherwise dead-lettering fails on AWS only."""
    queues = of_type(template, "AWS::SQS::Queue")
    sends: dict[str, set[str]] = {}
    receives: dict[str, set[str]] = {}
    for role, statement in policy_statements(template):
        actions = set(as_list(statement.get("Action")))
        targets = {getatt_target(r) for r in as_list(statement.get("Resource"))} - {None}
        if "sqs:ReceiveMessage" in actions:
            receives.setdefault(role, set()).update(t for t in targets if t)
        if "sqs:SendMessage" in actions:
            sends.setdefault(role, set()).update(t for t in targets if t)
    missing = []
    for role, consumed in receives.items():
        for queue in consumed:
            redrive = props(queues.get(queue, {})).get("RedrivePolicy")
            if not redrive:
                continue
            dlq = getatt_target(redrive["deadLetterTargetArn"])
            if dlq not in sends.get(role, set()):
                missing.append(f"{role} consumes {queue} but cannot send to {dlq}")
    assert receives, "no queue consumers found: the check would pass vacuously"
    assert not missing, missing


# --------------------------------------------------------------------------------- scaling
def scaling(template: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """ECS service -> (its scalable target, its scaling policy)."""
    targets = of_type(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    found = {}
    for policy in of_type(template, "AWS::ApplicationAutoScaling::ScalingPolicy").values():
        target = targets[props(policy)["ScalingTargetId"]["Ref"]]
        service = references(props(target)["ResourceId"]) - {"WorkersCluster"}
        assert len(service) == 1, service
        found[service.pop()] = (props(target), props(policy))
    return found


def test_every_ecs_service_has_a_scaling_policy(template: dict[str, Any]) -> None:
    services = set(of_type(template, "AWS::ECS::Service"))
    found = scaling(template)
    assert set(found) == services
    for service, (target, policy) in found.items():
        assert target["ServiceNamespace"] == "ecs", service
        assert target["ScalableDimension"] == "ecs:service:DesiredCount", service
        assert target["MinCapacity"] == {"Ref": "WorkerMinCount"}, service
        assert policy["PolicyType"] == "TargetTrackingScaling", service


def test_queue_workers_scale_on_the_backlog_of_the_queues_they_consume(
    template: dict[str, Any],
) -> None:
    """Backlog per task: the queues in the metric math are the ones the service's task role
    receives from, divided by the service's running tasks."""
    receives: dict[str, set[str]] = {}
    for role, statement in policy_statements(template):
        if "sqs:ReceiveMessage" in as_list(statement.get("Action")):
            receives.setdefault(role, set()).update(
                t for t in (getatt_target(r) for r in as_list(statement["Resource"])) if t)
    checked = 0
    for service, (target, policy) in scaling(template).items():
        task = props(template["Resources"][service])["TaskDefinition"]["Ref"]
        role = getatt_target(props(template["Resources"][task])["TaskRoleArn"])
        config = policy["TargetTrackingScalingPolicyConfiguration"]
        if "CustomizedMetricSpecification" not in config:
            continue
        metrics = config["CustomizedMetricSpecification"]["Metrics"]
        queues = {getatt_target(m["MetricStat"]["Metric"]["Dimensions"][0]["Value"])
                  for m in metrics if m.get("MetricStat", {}).get("Metric", {}).get(
                      "MetricName") == "ApproximateNumberOfMessagesVisible"}
        assert queues, service
        assert queues <= receives[str(role)], (service, queues - receives[str(role)])
        tasks = [m for m in metrics if m.get("MetricStat", {}).get("Metric", {}).get(
            "MetricName") == "RunningTaskCount"]
        assert len(tasks) == 1, service
        returned = [m for m in metrics if m.get("ReturnData")]
        assert len(returned) == 1, service
        assert returned[0]["Expression"].endswith("/ tasks"), service
        assert config["TargetValue"] == {"Ref": "QueueBacklogPerTask"}, service
        assert target["MaxCapacity"] == {"Ref": "WorkerMaxCount"}, service
        checked += 1
    assert checked == 7


def test_telemetry_workers_never_outnumber_the_shards(template: dict[str, Any]) -> None:
    target, _ = scaling(template)["TelemetryWorkerService"]
    assert target["MaxCapacity"] == {"Ref": "TelemetryShardCount"}
    stream = props(template["Resources"]["TelemetryStream"])
    assert stream["ShardCount"] == {"Ref": "TelemetryShardCount"}
    # 20,000 records/s at the peak, 1,000 records/s per shard, 20 % headroom.
    assert int(template["Parameters"]["TelemetryShardCount"]["Default"]) >= 20_000 // 1_000


def test_every_task_role_may_protect_its_own_task_from_scale_in(template: dict[str, Any]) -> None:
    """The ECS agent calls UpdateTaskProtection with the task role's credentials when the
    worker host asks it for scale-in protection (shared.hosts._protection)."""
    task_roles = {getatt_target(props(t)["TaskRoleArn"])
                  for t in of_type(template, "AWS::ECS::TaskDefinition").values()}
    granted: set[str] = set()
    for policy in of_type(template, "AWS::IAM::Policy").values():
        for statement in props(policy)["PolicyDocument"]["Statement"]:
            if "ecs:UpdateTaskProtection" not in as_list(statement["Action"]):
                continue
            assert references(statement["Resource"]) == {"WorkersCluster"}  # its tasks only
            granted |= {role["Ref"] for role in props(policy)["Roles"]}
    assert granted == task_roles


def test_the_dashboard_is_reached_over_https_through_its_load_balancer_only(
    template: dict[str, Any],
) -> None:
    from services.devices.dashboard import KEEPALIVE_SECONDS

    resources = template["Resources"]
    balancers = of_type(template, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert set(balancers) == {"DashboardLoadBalancer"}
    attributes = {a["Key"]: a["Value"]
                  for a in props(balancers["DashboardLoadBalancer"])["LoadBalancerAttributes"]}
    # An SSE stream is idle between keep-alive comments: the load balancer must not cut it.
    assert int(attributes["idle_timeout.timeout_seconds"]) > 2 * KEEPALIVE_SECONDS
    listeners = of_type(template, "AWS::ElasticLoadBalancingV2::Listener")
    assert [(props(x)["Protocol"], props(x)["Port"]) for x in listeners.values()] == [
        ("HTTPS", 443)]
    listener = props(listeners["DashboardHttpsListener"])
    assert listener["Certificates"] == [{"CertificateArn": {"Ref": "DashboardCertificateArn"}}]
    assert listener["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")

    task = props(resources["DashboardTaskDefinition"])["ContainerDefinitions"][0]
    group = props(resources["DashboardTargetGroup"])
    assert group["Port"] == task["PortMappings"][0]["ContainerPort"] == 8080
    assert group["TargetType"] == "ip"
    assert group["HealthCheckPath"] == "/healthz"
    service = props(resources["DashboardService"])
    assert service["LoadBalancers"]["Fn::If"][1] == [{
        "ContainerName": task["Name"], "ContainerPort": 8080,
        "TargetGroupArn": {"Ref": "DashboardTargetGroup"}}]
    # The tasks' own group admits the load balancer's group only, on the container port.
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"][
        "Fn::If"][1] == [{"Ref": "DashboardTaskSecurityGroup"}]
    ingress = props(resources["DashboardTaskSecurityGroup"])["SecurityGroupIngress"]
    assert [(r["FromPort"], r["ToPort"], getatt_target(r["SourceSecurityGroupId"]))
            for r in ingress] == [(8080, 8080, "DashboardLoadBalancerSecurityGroup")]
    assert not any("CidrIp" in r for r in ingress)
    # The load balancer's group: HTTPS in; out only to the tasks' group (no default egress).
    balancer_group = props(resources["DashboardLoadBalancerSecurityGroup"])
    assert [r["FromPort"] for r in balancer_group["SecurityGroupIngress"]] == [443]
    egress = [props(e) for e in of_type(template, "AWS::EC2::SecurityGroupEgress").values()
              if getatt_target(props(e)["GroupId"]) == "DashboardLoadBalancerSecurityGroup"]
    assert [getatt_target(e["DestinationSecurityGroupId"]) for e in egress] == [
        "DashboardTaskSecurityGroup"]
    for lid in (*balancers, *listeners, "DashboardTargetGroup", "DashboardTaskSecurityGroup",
                "DashboardLoadBalancerSecurityGroup"):
        assert resources[lid]["Condition"] == "HasDashboardLoadBalancer", lid


def test_functions_export_their_spans_through_the_collector_layer(
    template: dict[str, Any],
) -> None:
    for lid, function in of_type(template, "AWS::Lambda::Function").items():
        p = props(function)
        assert p["Layers"] == {"Fn::If": ["HasLambdaCollector",
                                          [{"Ref": "LambdaCollectorLayerArn"}],
                                          {"Ref": "AWS::NoValue"}]}, lid
        env = p["Environment"]["Variables"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["Fn::If"][1] == "http://localhost:4318", lid
        assert p["TracingConfig"] == {"Mode": "Active"}, lid


# --------------------------------------------------------------------------------- operate
def test_every_sns_subscription_dead_letters_to_a_dlq_of_its_own(
    template: dict[str, Any],
) -> None:
    queues = of_type(template, "AWS::SQS::Queue")
    subscriptions = of_type(template, "AWS::SNS::Subscription")
    assert subscriptions
    seen: set[str] = set()
    for lid, sub in subscriptions.items():
        redrive = props(sub).get("RedrivePolicy")
        assert redrive, f"{lid} has no RedrivePolicy"
        dlq = getatt_target(redrive["deadLetterTargetArn"])
        assert dlq in queues, f"{lid} dead-letters to {dlq}, not a queue of the template"
        assert dlq not in seen, f"{lid} shares its DLQ"
        assert dlq != getatt_target(props(sub)["Endpoint"])
        seen.add(dlq)
        # SNS itself sends to the DLQ: the queue policy must admit the topic
        admitted = [
            statement for policy in of_type(template, "AWS::SQS::QueuePolicy").values()
            if {"Ref": dlq} in props(policy)["Queues"]
            for statement in props(policy)["PolicyDocument"]["Statement"]
            if props(sub)["TopicArn"]["Ref"] in references(statement.get("Condition", {}))
        ]
        assert admitted, f"{dlq} does not admit {props(sub)['TopicArn']['Ref']}"


def _dedupe_window_days(template: dict[str, Any]) -> float:
    """The longest time after an effect at which a copy of its message can still reach the
    consumer: an archive replay (RetentionDays) of an event that then sits in a queue, fails,
    and waits in a DLQ (MessageRetentionPeriod) for a redrive."""
    archive = max(props(a)["RetentionDays"]
                  for a in of_type(template, "AWS::Events::Archive").values())
    queue = max(int(props(q).get("MessageRetentionPeriod", 345600))
                for q in of_type(template, "AWS::SQS::Queue").values())
    return archive + queue / 86400


def test_dedupe_records_outlive_every_replay_and_redrive_window(
    template: dict[str, Any],
) -> None:
    """Dedupe outlives every window that can bring a message back (docs/operations.md):
    the inbox table's records, the email idempotency records, and the replay tool's limit."""
    from services.orders.notifications import EMAIL_RECORD_RETENTION
    from shared.inbox import DEFAULT_RETENTION

    window = _dedupe_window_days(template)
    assert window == 44  # 30-day archives + 14-day DLQs: update the docs when this moves
    assert DEFAULT_RETENTION.total_seconds() / 86400 >= window
    assert EMAIL_RECORD_RETENTION.total_seconds() / 86400 >= window
