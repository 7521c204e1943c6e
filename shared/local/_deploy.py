"""Deploying the template for `up`, through `shared.deployment` (the one deployment path:
artifacts to S3, create or update, wait, read back). Until that module is in the tree, a
minimal create-or-update stands in (`_create_or_update`); it goes when it lands."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import anyio

from shared.aws import AwsClients, aws_errors
from shared.errors import AwsRequestError
from shared.local._template import TemplateError

__all__ = ["deploy_template"]

_CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]


async def deploy_template(
    aws: AwsClients,
    *,
    template: dict[str, Any],
    template_path: Path,
    statemachines_dir: Path,
    stack_name: str,
    within_s: float = 120.0,
    emulated: bool = True,
    parameters: dict[str, str] | None = None,
) -> None:
    """Create or update `stack_name` and wait until it settles.

    On an emulator the template's parameters that only AWS needs get local placeholders
    (`shared.deployment.local_parameters`), keeping only those the template declares.

    Raises a ConfigurationError (one line) when the stack cannot be deployed.
    """
    try:
        deployment: Any = importlib.import_module("shared.deployment")
    except ImportError:
        await _create_or_update(
            aws, template_path=template_path, stack_name=stack_name, within_s=within_s
        )
        return
    declared = set(template.get("Parameters", {}))
    values = dict(deployment.local_parameters()) if emulated else {}
    values.update(parameters or {})
    await deployment.deploy(
        aws,
        deployment.DeploySettings(
            stack_name=stack_name,
            template=template_path,
            statemachines_dir=statemachines_dir,
            parameters={k: v for k, v in values.items() if k in declared},
            timeout=within_s,
        ),
    )


async def _create_or_update(
    aws: AwsClients,
    *,
    template_path: Path,
    stack_name: str,
    within_s: float = 120.0,
) -> None:
    """Create or update `stack_name` from `template_path` and wait until it settles.

    Raises TemplateError when CloudFormation refuses the template or the stack fails.
    """
    cfn = await aws.client("cloudformation")
    body = await anyio.Path(template_path).read_text()
    try:
        with aws_errors():
            await cfn.describe_stacks(StackName=stack_name)
        exists = True
    except AwsRequestError:
        exists = False
    try:
        with aws_errors():
            if exists:
                await cfn.update_stack(
                    StackName=stack_name,
                    TemplateBody=body,
                    Capabilities=_CAPABILITIES,
                )
            else:
                await cfn.create_stack(
                    StackName=stack_name,
                    TemplateBody=body,
                    Capabilities=_CAPABILITIES,
                )
    except AwsRequestError as exc:
        if "No updates are to be performed" in str(exc):
            return
        raise TemplateError(f"CloudFormation refused {template_path}: {exc}") from None
    deadline = time.monotonic() + within_s
    while True:
        with aws_errors():
            stack = (await cfn.describe_stacks(StackName=stack_name))["Stacks"][0]
        status = str(stack["StackStatus"])
        if not status.endswith("_IN_PROGRESS"):
            break
        if time.monotonic() > deadline:
            raise TemplateError(f"stack {stack_name} still {status} after {within_s:.0f} s")
        await anyio.sleep(0.2)
    if status not in {"CREATE_COMPLETE", "UPDATE_COMPLETE"}:
        reason = stack.get("StackStatusReason") or "see the emulator log"
        raise TemplateError(f"stack {stack_name} ended {status}: {reason}")
