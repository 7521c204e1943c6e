"""The one template loader (`shared.cloudformation`): one meaning of the short-form tags for
the deployment's check, the local runner and the template's tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.cloudformation import TemplateError, load_template, parse_template
from shared.deployment import TemplateInvalidError
from shared.deployment import _check_parses as check_parses

SHORT = b"""
Conditions:
  Eu: !Equals [!Ref Zone, eu]
Resources:
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub "${AWS::StackName}-q"
      Dlq: !GetAtt Dead.Arn
      Deep: !GetAtt Stream.Attribute.With.Dots
      Policy: !Sub
        - "arn:${Partition}:sqs"
        - Partition: !Ref AWS::Partition
      Maybe: !If [Eu, !Select [0, !Split [",", !Ref Zones]], !Ref AWS::NoValue]
      Only: !Condition Eu
"""

LONG = {
    "Conditions": {"Eu": {"Fn::Equals": [{"Ref": "Zone"}, "eu"]}},
    "Resources": {"Queue": {"Type": "AWS::SQS::Queue", "Properties": {
        "QueueName": {"Fn::Sub": "${AWS::StackName}-q"},
        "Dlq": {"Fn::GetAtt": ["Dead", "Arn"]},
        "Deep": {"Fn::GetAtt": ["Stream", "Attribute.With.Dots"]},
        "Policy": {"Fn::Sub": ["arn:${Partition}:sqs", {"Partition": {"Ref": "AWS::Partition"}}]},
        "Maybe": {"Fn::If": ["Eu", {"Fn::Select": [0, {"Fn::Split": [",", {"Ref": "Zones"}]}]},
                             {"Ref": "AWS::NoValue"}]},
        "Only": {"Condition": "Eu"},
    }}},
}


def test_short_form_tags_read_as_the_long_form_a_json_template_is_written_in() -> None:
    assert parse_template(SHORT, source="t.yaml") == LONG
    assert parse_template(json.dumps(LONG), source="t.json") == LONG


def test_a_key_twice_is_refused_naming_the_line_for_every_reader(tmp_path: Path) -> None:
    twice = b"Resources:\n  Q:\n    Type: A\n  Q:\n    Type: B\n"
    with pytest.raises(TemplateError, match=r"at line 4: found the key 'Q' twice") as info:
        parse_template(twice, source="t.yaml")
    assert "\n" not in str(info.value)
    with pytest.raises(TemplateInvalidError, match="twice"):
        check_parses(tmp_path / "t.yaml", twice)


def test_load_template_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="not found"):
        load_template(tmp_path / "missing.yaml")
    (tmp_path / "t.yaml").write_bytes(SHORT)
    assert load_template(tmp_path / "t.yaml") == LONG
