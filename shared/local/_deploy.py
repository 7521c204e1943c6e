"""Deploying the template for `up`: delegates to `shared.deployment` when it exists; until
then (and as its minimal stand-in) creates or updates the stack and waits for it."""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from shared.aws import AwsClients, aws_errors
from shared.errors import AwsRequestError
from shared.local._template import TemplateError

__all__ = ["deploy_template"]

_CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]


async def deploy_template(
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
