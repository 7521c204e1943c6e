"""CloudFormation templates as data: one YAML loader, one meaning of the short-form tags.

`!Ref X` reads as `{"Ref": "X"}`, `!GetAtt A.B` as `{"Fn::GetAtt": ["A", "B"]}`,
`!Condition C` as `{"Condition": "C"}` and every other `!Name value` as
`{"Fn::Name": value}`: the long form CloudFormation itself uses (and JSON templates are
written in). So whoever reads a template (the deployment's check before uploading it, the
local runner resolving it against a deployed stack, the template's own tests) reads the same
document. A mapping that names a key twice is refused: YAML would keep the last one
silently, cfn-lint refuses it.

    template = load_template(Path("deploy/template.yaml"))
    template["Resources"]["OrdersQueue"]["Properties"]["RedrivePolicy"]
        # {"deadLetterTargetArn": {"Fn::GetAtt": ["OrdersDlq", "Arn"]}, ...}

The project's template is `DEFAULT_TEMPLATE` (relative to the working directory, the
checkout, as `fleetline up --template`); the state machine definitions it names by
`${StateMachinesPrefix}/<file>` are in `statemachines_dir(template)`, beside it.

Every error is a `TemplateError` whose message is one line naming the file (and the line).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import yaml

from shared.errors import ConfigurationError

__all__ = [
    "DEFAULT_TEMPLATE",
    "Template",
    "TemplateError",
    "load_template",
    "parse_template",
    "read_template",
    "references",
    "statemachines_dir",
]

Template = dict[str, Any]
DEFAULT_TEMPLATE: Final = Path("deploy", "template.yaml")

# libyaml's parser when PyYAML has it: ~10x faster on a template of this size (0.1 s).
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class TemplateError(ConfigurationError):
    """The template cannot be read, or uses something that cannot be resolved locally."""


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """Safe YAML with CloudFormation's short-form tags in their long form; duplicate keys
    refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"found the key {key_node.value!r} twice", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def _short_form(loader: _Loader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix in {"Ref", "Condition"} else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_Loader.add_multi_constructor("!", _short_form)


def statemachines_dir(template: Path) -> Path:
    """Where the state machine definitions of `template` are: `statemachines/` beside it
    (`deploy/statemachines/` for `deploy/template.yaml`)."""
    return template.parent / "statemachines"


def read_template(path: Path) -> bytes:
    """The template file's bytes.

    Raises:
        TemplateError: there is no file at `path`.
    """
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise TemplateError(
            f"template {path} not found: run from the repository root or pass --template"
        ) from None


def parse_template(text: str | bytes, *, source: str | Path) -> Template:
    """The template in `text` as plain dicts, short-form tags in their long form.

    Raises:
        TemplateError: not YAML (naming `source` and the line), or no Resources mapping.
    """
    try:
        template = yaml.load(text, Loader=_Loader)  # a SafeLoader underneath
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TemplateError(
            f"template {source} is invalid{where}: {' '.join(str(problem).split())}; fix it "
            f"and run `cfn-lint {source}`"
        ) from None
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise TemplateError(
            f"template {source} is invalid: it has no Resources section, so it is not a "
            "CloudFormation template"
        )
    return template


def load_template(path: Path) -> Template:
    """`parse_template` of the file at `path`.

    Raises:
        TemplateError: no such file, not YAML, or no Resources mapping (one line each).
    """
    return parse_template(read_template(path), source=path)


_SUB_VARIABLE: Final = re.compile(r"\$\{([^}!]+)\}")


def references(value: Any) -> set[str]:
    """The logical ids and parameters `value` refers to: `Ref`, `Fn::GetAtt` (the resource,
    without the attribute), the `${X}` / `${X.Attr}` variables of `Fn::Sub` and its variable
    map, anywhere inside. Pseudo parameters (`AWS::Region`, ...) are left out. Pure."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref":
                found.add(str(inner))
            elif key == "Fn::GetAtt":
                found.add(str(inner[0] if isinstance(inner, list) else inner).split(".")[0])
            elif key == "Fn::Sub":
                text = inner[0] if isinstance(inner, list) else inner
                found.update(v.split(".")[0] for v in _SUB_VARIABLE.findall(str(text)))
                if isinstance(inner, list) and len(inner) > 1:
                    found.update(references(inner[1]))
            else:
                found.update(references(inner))
    elif isinstance(value, list):
        for inner in value:
            found.update(references(inner))
    return {name for name in found if not name.startswith("AWS::")}
