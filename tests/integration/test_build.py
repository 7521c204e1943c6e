"""The Lambda artifact (`fleetline build --no-images`) and `fleetline deploy` against the
emulator: the same path as on AWS, without the image push."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import anyio
import pytest

from shared.aws import AwsClients
from shared.build import (
    LAMBDA_EXCLUDED_DISTRIBUTIONS,
    LAMBDA_EXCLUDED_MODULES,
    BuildSettings,
    build_lambda,
    lambda_requirements,
)
from shared.cloudformation import load_template
from shared.deployment import describe

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "template.yaml"
HANDLERS = sorted({
    r["Properties"]["Handler"] for r in load_template(TEMPLATE)["Resources"].values()
    if r["Type"] == "AWS::Lambda::Function"
})

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once (a few seconds with the uv cache; the dependencies come from PyPI)."""
    out = tmp_path_factory.mktemp("build")
    return build_lambda(BuildSettings(context=ROOT, out=out, images=False))


def names(artifact: Path) -> list[str]:
    with zipfile.ZipFile(artifact) as archive:
        return archive.namelist()


def test_the_artifact_holds_the_dependencies_for_the_lambda_platform(artifact: Path) -> None:
    files = names(artifact)
    for package in ("aiobotocore/", "botocore/", "pydantic/", "structlog/", "orjson/",
                    "opentelemetry/sdk/", "anyio/", "yaml/"):
        assert any(f.startswith(package) for f in files), package
    # Compiled for the template's functions: arm64, python3.12.
    native = [f for f in files if f.endswith(".so")]
    assert native
    assert all("aarch64" in f for f in native if "cpython" in f), native
    assert any(f.startswith("pydantic_core/") and "cpython-312-aarch64" in f for f in native)
    # The event registry reads the project's entry points from its metadata.
    assert "fleetline-0.1.0.dist-info/entry_points.txt" in files
    for handler in HANDLERS:
        module = handler.rsplit(".", 1)[0].replace(".", "/") + ".py"
        assert module in files, module


def test_the_artifact_leaves_out_the_tools(artifact: Path) -> None:
    files = names(artifact)
    leftovers = [f for f in files if f.startswith(LAMBDA_EXCLUDED_MODULES)]
    assert not leftovers
    for tool in ("moto/", "typer/", "rich/", "click/", "pygments/", "cfnlint/", "pytest/",
                 "playwright/", "waitress/", "tests/", "bench/", "uv/"):
        assert not any(f.startswith(tool) for f in files), tool
    assert not any("simulator" in f or "harness" in f for f in files)
    assert not any("__pycache__" in f for f in files)


def test_the_lock_for_the_artifact_drops_only_the_command_lines_distributions() -> None:
    lock = (ROOT / "requirements-runtime.lock").read_text()
    kept = lambda_requirements(lock)
    pinned = {line.split("==")[0] for line in lock.splitlines() if line[:1].isalnum()}
    left = {line.split("==")[0] for line in kept.splitlines() if line[:1].isalnum()}
    assert pinned - left == LAMBDA_EXCLUDED_DISTRIBUTIONS & pinned
    assert "aiobotocore" in left
    assert kept.count("--hash=") > 40


def test_every_handler_imports_without_what_the_artifact_leaves_out() -> None:
    """Import each handler module in a fresh interpreter with the excluded modules and
    distributions made unimportable: what the function would meet in the artifact."""
    blocked = sorted({
        *(m.removesuffix("/").removesuffix(".py").replace("/", ".")
          for m in LAMBDA_EXCLUDED_MODULES),
        "typer", "rich", "click", "pygments", "shellingham", "markdown_it", "mdurl", "moto",
    })
    code = (
        "import importlib, importlib.abc, sys\n"
        f"BLOCKED = {blocked!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if any(name == b or name.startswith(b + '.') for b in BLOCKED):\n"
        "            raise ImportError(f'{name} is not in the Lambda artifact')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for handler in {HANDLERS!r}:\n"
        "    module, _, attr = handler.rpartition('.')\n"
        "    assert callable(getattr(importlib.import_module(module), attr)), handler\n"
        "from shared.events import load_registered_events\n"
        "load_registered_events()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"},
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


@pytest.mark.emulator
async def test_deploy_uploads_the_artifact_and_deploys_the_stack(
    aws: AwsClients, tmp_path: Path,
) -> None:
    """`fleetline deploy` against the emulator: the artifact it was given is the stack's code,
    the image parameter the local placeholder (no push)."""
    artifact = tmp_path / "lambda.zip"
    with zipfile.ZipFile(artifact, "w") as archive:
        archive.writestr("marker.txt", "built by test_build")
    done = await anyio.run_process(
        [str(Path(sys.executable).parent / "fleetline"), "deploy", "--artifact", str(artifact),
         "--stack-name", "shipped", "--template", str(TEMPLATE)],
        cwd=ROOT, env={**os.environ}, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "deployed shipped" in done.stdout.decode()
    deployment = await describe(aws, "shipped")
    code_key = deployment.parameters["CodeKey"]
    assert deployment.parameters["ImageUri"].endswith("/fleetline:local")
    s3 = await aws.client("s3")
    bucket = deployment.parameters["ArtifactBucket"]
    body = await (await s3.get_object(Bucket=bucket, Key=code_key))["Body"].read()
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.read("marker.txt") == b"built by test_build"
    functions = await aws.client("lambda")
    config = await functions.get_function(FunctionName="shipped-orders-api")
    assert json.dumps(config["Configuration"]["Handler"]) == '"services.orders.api.handler"'
