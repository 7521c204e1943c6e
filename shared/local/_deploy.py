"""Deploying the template for `up`, through `shared.deployment` (the one deployment path:
artifacts to S3, create or update, wait, read back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.aws import AwsClients
from shared.deployment import DeploySettings, deploy, local_parameters

__all__ = ["deploy_template"]


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
    names_region: str | None = None,
) -> None:
    """Create or update `stack_name` and wait until it settles. `names_region`: see
    `shared.deployment.DeploySettings` (one stack name in several Regions of the emulator).

    On an emulator the template's parameters that only AWS needs get local placeholders
    (`shared.deployment.local_parameters`); only the ones the template declares are passed.

    Raises shared.deployment.DeploymentError (one line) when the stack cannot be deployed.
    """
    declared = set(template.get("Parameters", {}))
    values = dict(local_parameters()) if emulated else {}
    values.update(parameters or {})
    await deploy(
        aws,
        DeploySettings(
            stack_name=stack_name,
            template=template_path,
            statemachines_dir=statemachines_dir,
            parameters={k: v for k, v in values.items() if k in declared},
            timeout=within_s,
            emulator=emulated,  # moto runs SQS mappings itself, badly: see DeploySettings
            names_region=names_region if emulated else None,
        ),
    )
