"""The pure parts of shared.deployment: settings, the template parse check, artifacts."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from shared.cloudformation import statemachines_dir
from shared.deployment import (
    DeploySettings,
    TemplateInvalidError,
    distribution_packages,
    local_parameters,
)
from shared.deployment import _build_artifacts as build_artifacts
from shared.deployment import _check_parses as check_parses
from shared.deployment import _code_zip as code_zip
from shared.deployment import _first_leaf as first_leaf
from shared.errors import FleetlineError


def test_settings_refuse_what_deploy_sets_itself() -> None:
    with pytest.raises(ValueError, match="CodeKey"):
        DeploySettings(parameters={"CodeKey": "x"})
    with pytest.raises(ValueError, match="stack_name"):
        DeploySettings(stack_name="1bad")
    with pytest.raises(ValueError, match="timeout"):
        DeploySettings(timeout=0)


def test_local_parameters_name_the_zone_and_refuse_others() -> None:
    assert local_parameters(zone="us")["ResidencyZone"] == "us"
    with pytest.raises(ValueError, match="zone"):
        local_parameters(zone="apac")


def test_short_form_tags_parse_and_syntax_errors_name_the_line(tmp_path: Path) -> None:
    check_parses(tmp_path / "t.yaml", b"Resources:\n  Q:\n    Type: X\n    Properties:\n"
                                      b"      A: !GetAtt B.Arn\n      C: !Sub [x, {}]\n")
    with pytest.raises(TemplateInvalidError, match="at line 4") as info:
        check_parses(tmp_path / "t.yaml", b"Resources:\n  Q:\n  bad: [\n")
    assert "\n" not in str(info.value)
    with pytest.raises(TemplateInvalidError, match="no Resources"):
        check_parses(tmp_path / "t.yaml", b"Parameters: {}\n")


def make_tree(root: Path) -> dict[str, Path]:
    """Two packages under `root`, by name with their directories (`DeploySettings.packages`)."""
    for package in ("shared", "services"):
        (root / package / "__pycache__").mkdir(parents=True)
        (root / package / "__init__.py").write_text(f"# {package}\n")
        (root / package / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    return {"shared": root / "shared", "services": root / "services"}


def test_code_zip_holds_both_packages_without_caches_and_depends_on_content_only(
    tmp_path: Path,
) -> None:
    packages = make_tree(tmp_path)
    first = code_zip(packages)
    names = zipfile.ZipFile(io.BytesIO(first)).namelist()
    assert names == ["shared/__init__.py", "services/__init__.py"]
    (tmp_path / "shared" / "__init__.py").touch()  # new mtime, same content
    assert code_zip(packages) == first
    (tmp_path / "shared" / "__init__.py").write_text("# changed\n")
    assert code_zip(packages) != first


def test_artifacts_are_content_addressed(tmp_path: Path) -> None:
    packages = make_tree(tmp_path)
    template = tmp_path / "template.yaml"
    template.write_text("Resources: {Q: {Type: AWS::SQS::Queue}}\n")
    machines = tmp_path / "machines"
    machines.mkdir()
    (machines / "saga.asl.json").write_text("{}")
    settings = DeploySettings(template=template, statemachines_dir=machines, packages=packages)
    first = build_artifacts(settings)
    assert set(first.files) == {first.template_key, first.code_key,
                                f"{first.statemachines_prefix}/saga.asl.json"}
    assert build_artifacts(settings).prefix == first.prefix
    (machines / "saga.asl.json").write_text('{"StartAt": "A"}')
    assert build_artifacts(settings).prefix != first.prefix


def test_the_code_is_the_installed_distributions_packages_as_python_imports_them() -> None:
    import services.orders
    import shared

    found = distribution_packages()
    assert set(found) == {"shared", "services"}  # pyproject's packages.find, nothing typed twice
    assert found["shared"] == Path(shared.__file__).parent
    assert found["services"] == Path(services.orders.__file__).parent.parent
    names = zipfile.ZipFile(io.BytesIO(code_zip(found))).namelist()
    assert "shared/deployment.py" in names
    assert "services/orders/api.py" in names


def test_state_machines_are_read_from_beside_the_template_by_default(tmp_path: Path) -> None:
    packages = make_tree(tmp_path / "code")
    stack = tmp_path / "elsewhere"
    (stack / "statemachines").mkdir(parents=True)
    (stack / "statemachines" / "flow.asl.json").write_text("{}")
    (stack / "template.yaml").write_text("Resources: {Q: {Type: AWS::SQS::Queue}}\n")
    assert statemachines_dir(stack / "template.yaml") == stack / "statemachines"
    artifacts = build_artifacts(DeploySettings(template=stack / "template.yaml",
                                               packages=packages))
    assert f"{artifacts.statemachines_prefix}/flow.asl.json" in artifacts.files


def test_missing_template_is_a_one_line_template_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateInvalidError, match="not found"):
        build_artifacts(DeploySettings(template=tmp_path / "nope.yaml"))


def test_task_group_errors_report_ours_first() -> None:
    ours = FleetlineError("one line")
    group = BaseExceptionGroup("g", [RuntimeError("other"), ExceptionGroup("h", [ours])])
    assert first_leaf(group) is ours
