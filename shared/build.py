"""What users deploy, built: the container image every ECS service runs, the emulator image
of compose.yaml, and the Lambda artifact (`fleetline build`; `fleetline deploy` ships them).

    result = build(BuildSettings(base="local/debian:bookworm", ca_bundle=Path(CA)))
    result.image, result.image_bytes, result.lambda_zip, result.lambda_bytes

The images come from the root `Dockerfile` (targets `worker` and `emulator`), built with
BuildKit (build secrets: the CA bundle of a proxy that re-signs TLS never lands in a layer).

The Lambda artifact is one zip for every function of the template (each gets only what
functions need): the dependencies from `requirements-runtime.lock` installed for the Lambda
runtime's platform (`manylinux2014_aarch64`, CPython 3.12: the template's `arm64` and
`python3.12`) by hash, without the command line's (`LAMBDA_EXCLUDED_DISTRIBUTIONS`); the
`shared` and `services` packages without the emulator, the local runner, the CLI, the
simulator, the demo and the test harnesses (`LAMBDA_EXCLUDED_MODULES`); and the project's
distribution metadata, which the event registry reads its `fleetline.events` entry points
from. A zip, not a container image: the functions are small handlers over the same code,
a zip deploys with the stack's own code key and starts faster, and one build serves them all.

Every failure is a `BuildError` whose message is one line that says what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shared.aws import AwsClients
from shared.deployment import Deployment, distribution_packages
from shared.errors import ConfigurationError

__all__ = [
    "LAMBDA_EXCLUDED_DISTRIBUTIONS",
    "LAMBDA_EXCLUDED_MODULES",
    "LAMBDA_PLATFORM",
    "LAMBDA_PYTHON",
    "BuildError",
    "BuildResult",
    "BuildSettings",
    "DeployRequest",
    "build",
    "build_images",
    "build_lambda",
    "ecr_credentials",
    "lambda_requirements",
    "push_image",
    "run_deploy",
]

LAMBDA_PLATFORM: Final = "manylinux2014_aarch64"
LAMBDA_PYTHON: Final = "3.12"
# The command line's own dependencies: no function imports them
# (tests/integration/test_build.py imports every handler with them blocked).
LAMBDA_EXCLUDED_DISTRIBUTIONS: Final = frozenset({
    "typer", "rich", "click", "shellingham", "markdown-it-py", "mdurl", "pygments",
    "colorama", "annotated-doc",
})
# Our modules no function needs (path prefixes inside the zip).
LAMBDA_EXCLUDED_MODULES: Final = (
    "shared/emulator/", "shared/local/", "shared/testing/", "shared/cli.py", "shared/build.py",
    "services/devices/simulator.py", "services/devices/static/", "services/devices/demo.py",
    "services/orders/demo.py", "services/firmware/demo.py", "services/orders/harness.py",
    "services/firmware/harness.py", "services/devices/cli.py", "services/orders/cli.py",
    "services/firmware/cli.py",
)
_ZIP_EPOCH: Final = (2020, 1, 1, 0, 0, 0)
_LOCK: Final = "requirements-runtime.lock"


class BuildError(ConfigurationError):
    """An image or the Lambda artifact could not be built; the message says why."""


@dataclass(frozen=True, kw_only=True)
class BuildSettings:
    """What to build, from where.

    `context` is the checkout (the Dockerfile and the locks); `base` the images' base
    (`python:3.11-slim`, or a local Debian base where no registry is reachable);
    `ca_bundle` a CA bundle passed as the build secret `ca` (a proxy that re-signs TLS);
    `network` the builds' network (`host` on a daemon without a bridge); `docker` the client
    (BuildKit: Docker 23+, or Debian's 20.10 client; `FLEETLINE_DOCKER` overrides).
    """

    context: Path = Path(".")
    out: Path = Path("build")
    image: str = "fleetline:local"
    emulator_image: str = "fleetline-emulator:local"
    base: str = "python:3.11-slim"
    ca_bundle: Path | None = None
    network: str | None = None
    docker: str = field(default_factory=lambda: os.environ.get("FLEETLINE_DOCKER", "docker"))
    images: bool = True
    lambda_artifact: bool = True
    docker_env: dict[str, str] | None = None  # the client's environment (DOCKER_HOST, ...)


@dataclass(frozen=True)
class BuildResult:
    """What was built and how big it is (bytes; 0 for what was not built)."""

    image: str | None = None
    image_bytes: int = 0
    emulator_image: str | None = None
    emulator_image_bytes: int = 0
    lambda_zip: Path | None = None
    lambda_bytes: int = 0
    lambda_unzipped_bytes: int = 0
    seconds: float = 0.0


def _run(argv: Sequence[str], *, env: dict[str, str] | None = None, what: str,
         cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True,
                              check=False)
    except FileNotFoundError:
        raise BuildError(
            f"{what}: {argv[0]} not found; install it or set FLEETLINE_DOCKER") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise BuildError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout


def build_images(settings: BuildSettings) -> tuple[tuple[str, int], tuple[str, int]]:
    """Build the worker and emulator images; ((image, bytes), (emulator image, bytes)).

    Raises:
        BuildError: the client is missing or a build fails (the last lines of its output).
    """
    env = {**os.environ, **(settings.docker_env or {}), "DOCKER_BUILDKIT": "1"}
    common = [settings.docker, "build", "--build-arg", f"BASE={settings.base}"]
    if settings.ca_bundle is not None:
        if not settings.ca_bundle.is_file():
            raise BuildError(f"ca_bundle {settings.ca_bundle} is not a file")
        common += ["--secret", f"id=ca,src={settings.ca_bundle.resolve()}"]
    if settings.network:
        common += ["--network", settings.network]
    revision = _git_revision(settings.context)
    targets = (("worker", settings.image), ("emulator", settings.emulator_image))

    def build_one(target: str, tag: str) -> tuple[str, int]:
        _run([*common, "--build-arg", f"REVISION={revision}", "--target", target, "-t", tag,
              str(settings.context)], env=env, what=f"docker build --target {target}")
        size = _run([settings.docker, "image", "inspect", "--format", "{{.Size}}", tag],
                    env=env, what=f"docker image inspect {tag}")
        return tag, int(size.strip() or 0)

    # Both at once: BuildKit runs the stage they share (the builder) once, and the worker's
    # last stage overlaps the emulator's own installs.
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        futures = [pool.submit(build_one, target, tag) for target, tag in targets]
        worker, emulator = (future.result() for future in futures)
    return worker, emulator


def _git_revision(context: Path) -> str:
    try:
        done = subprocess.run(["git", "-C", str(context), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def lambda_requirements(lock_text: str) -> str:
    """`requirements-runtime.lock` without `LAMBDA_EXCLUDED_DISTRIBUTIONS` (each entry with
    its hash lines). Pure."""
    kept: list[str] = []
    skipping = False
    for line in lock_text.splitlines():
        if line[:1].isalnum():
            name = re.split(r"[=<>;\s]", line, maxsplit=1)[0].lower().replace("_", "-")
            skipping = name in LAMBDA_EXCLUDED_DISTRIBUTIONS
        elif not line.startswith((" ", "\t")):
            skipping = False
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"


def _excluded(name: str) -> bool:
    return name.startswith(LAMBDA_EXCLUDED_MODULES) or "__pycache__" in name or name.endswith(
        ".pyc")


def _install_dependencies(requirements: Path, target: Path, ca_bundle: Path | None) -> None:
    """The locked dependencies for the Lambda platform into `target` (uv when the dev tools
    are installed: seconds; else pip)."""
    env = dict(os.environ)
    if ca_bundle is not None:
        env.update(SSL_CERT_FILE=str(ca_bundle), PIP_CERT=str(ca_bundle))
    try:
        import uv  # the lock's own tool, in the dev extra

        argv = [uv.find_uv_bin(), "pip", "install", "--quiet", "--target", str(target),
                "--python-platform", "aarch64-manylinux2014", "--python-version", LAMBDA_PYTHON,
                "--only-binary", ":all:", "--no-deps", "--require-hashes", "-r",
                str(requirements)]
    except ImportError:
        argv = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target),
                "--platform", LAMBDA_PLATFORM, "--implementation", "cp", "--python-version",
                LAMBDA_PYTHON, "--only-binary=:all:", "--no-deps", "--require-hashes", "-r",
                str(requirements)]
    _run(argv, env=env, what="installing the Lambda dependencies")


def _metadata_files() -> Iterator[tuple[str, bytes]]:
    """The project's METADATA and entry points (the event registry reads
    `fleetline.events` from them), under the name a wheel would give them."""
    dist = importlib.metadata.distribution("fleetline")
    folder = f"fleetline-{dist.version}.dist-info"
    for name in ("METADATA", "entry_points.txt"):
        text = dist.read_text(name)
        if text is None:
            raise BuildError(f"the installed fleetline has no {name}: run `make install`")
        yield f"{folder}/{name}", text.encode()


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, _ZIP_EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def build_lambda(settings: BuildSettings, *,
                 install: Callable[[Path, Path, Path | None], None] | None = None) -> Path:
    """Build `<out>/lambda.zip` (deterministic: same inputs, same bytes) and return its path.

    `install(requirements, target, ca_bundle)` puts the dependencies in `target` (default:
    from the lock, for the Lambda platform).

    Raises:
        BuildError: the lock is missing, or the dependencies cannot be installed.
    """
    lock = settings.context / _LOCK
    if not lock.is_file():
        raise BuildError(f"{lock} not found: run from the checkout, or `make lock`")
    settings.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleetline-lambda-") as scratch:
        requirements = Path(scratch, "requirements.txt")
        requirements.write_text(lambda_requirements(lock.read_text()))
        target = Path(scratch, "site")
        target.mkdir()
        (install or _install_dependencies)(requirements, target, settings.ca_bundle)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            files = [(p.relative_to(target).as_posix(), p)
                     for p in sorted(target.rglob("*")) if p.is_file()]
            for package, base in sorted(distribution_packages().items()):
                files += [((Path(package) / p.relative_to(base)).as_posix(), p)
                          for p in sorted(base.rglob("*")) if p.is_file()]
            for name, path in sorted(files):
                if _excluded(name) or name.endswith(".dist-info/RECORD"):
                    continue
                archive.writestr(_entry(name), path.read_bytes())
            for name, body in _metadata_files():
                archive.writestr(_entry(name), body)
    artifact = settings.out / "lambda.zip"
    artifact.write_bytes(buffer.getvalue())
    return artifact


def build(settings: BuildSettings, *, echo: Callable[[str], None] = print) -> BuildResult:
    """The images (unless `images=False`) and the Lambda artifact (unless
    `lambda_artifact=False`), with their sizes echoed as they are done.

    Raises:
        BuildError: see `build_images` and `build_lambda`.
    """
    started = time.monotonic()
    result = BuildResult()
    if settings.images:
        (image, size), (emulator, emulator_size) = build_images(settings)
        echo(f"image {image}: {size / 1e6:.0f} MB")
        echo(f"image {emulator}: {emulator_size / 1e6:.0f} MB")
        result = BuildResult(image=image, image_bytes=size, emulator_image=emulator,
                             emulator_image_bytes=emulator_size)
    if settings.lambda_artifact:
        artifact = build_lambda(settings)
        with zipfile.ZipFile(artifact) as archive:
            unzipped = sum(i.file_size for i in archive.infolist())
        zipped = artifact.stat().st_size
        digest = hashlib.sha256(artifact.read_bytes()).hexdigest()[:12]
        echo(f"lambda {artifact}: {zipped / 1e6:.1f} MB ({unzipped / 1e6:.0f} MB unzipped, "
             f"sha256 {digest})")
        result = BuildResult(
            image=result.image, image_bytes=result.image_bytes,
            emulator_image=result.emulator_image,
            emulator_image_bytes=result.emulator_image_bytes,
            lambda_zip=artifact, lambda_bytes=zipped, lambda_unzipped_bytes=unzipped,
        )
    return dataclasses.replace(result, seconds=round(time.monotonic() - started, 1))



async def ecr_credentials(aws: AwsClients) -> tuple[str, str]:
    """(user, password) for `docker login` to the account's ECR registry.

    Raises:
        shared.errors.AwsRequestError: ECR refused (ecr:GetAuthorizationToken).
    """
    import base64

    from shared.aws import aws_errors

    ecr = await aws.client("ecr")
    with aws_errors():
        auth = (await ecr.get_authorization_token())["authorizationData"][0]
    user, _, password = base64.b64decode(auth["authorizationToken"]).decode().partition(":")
    return user, password


def push_image(image: str, repository: str, *, credentials: tuple[str, str],
               docker: str = "docker", docker_env: dict[str, str] | None = None) -> str:
    """Push the local `image` to the ECR `repository` (`<account>.dkr.ecr.<region>.amazonaws
    .com/<name>`), logged in with `credentials` (`ecr_credentials`); returns the pushed URI
    with its digest (`repo@sha256:...`), which the stack's ImageUri then pins.

    Raises:
        BuildError: the login, tag or push fails.
    """
    user, password = credentials
    registry = repository.split("/", 1)[0]
    env = {**os.environ, **(docker_env or {})}
    login = subprocess.run([docker, "login", "--username", user, "--password-stdin", registry],
                           input=password, env=env, capture_output=True, text=True, check=False)
    if login.returncode != 0:
        raise BuildError(f"docker login {registry} failed: {login.stderr.strip()}")
    tag = f"{repository}:{image.rpartition(':')[2] or 'latest'}"
    _run([docker, "tag", image, tag], env=env, what="docker tag")
    _run([docker, "push", tag], env=env, what=f"docker push {tag}")
    digests = _run([docker, "image", "inspect", "--format", "{{range .RepoDigests}}{{.}} {{end}}",
                    tag], env=env, what="docker image inspect")
    for digest in digests.split():
        if digest.startswith(repository + "@"):
            return digest
    return tag


@dataclass(frozen=True, kw_only=True)
class DeployRequest:
    """What `fleetline deploy` ships: the built Lambda `artifact`, the local `image` (pushed
    to `repository` on AWS), the template and its `parameters`. `endpoint` is the emulator's
    (AWS_ENDPOINT_URL): then nothing is pushed and the placeholders of
    `shared.deployment.local_parameters` stand in for the image and the network."""

    stack_name: str = "fleetline"
    template: Path = Path("deploy", "template.yaml")
    artifact: Path = Path("build", "lambda.zip")
    image: str = "fleetline:local"
    repository: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    endpoint: str | None = None
    docker: str = field(default_factory=lambda: os.environ.get("FLEETLINE_DOCKER", "docker"))


def _repository_arn(repository: str) -> str:
    """`<account>.dkr.ecr.<region>.amazonaws.com/<name>` -> its ARN.

    Raises:
        BuildError: not an ECR repository URI.
    """
    match = re.fullmatch(r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/(.+)",
                         repository)
    if match is None:
        raise BuildError(f"repository must be an ECR URI (<account>.dkr.ecr.<region>"
                         f".amazonaws.com/<name>), got {repository!r}")
    account, region, name = match.groups()
    return f"arn:aws:ecr:{region}:{account}:repository/{name}"


async def run_deploy(request: DeployRequest) -> Deployment:
    """Push the image (AWS only), upload the artifact and the template, create or update the
    stack with ImageUri / ImageRepositoryArn and CodeKey, and wait (`shared.deployment`).

    Raises:
        BuildError: no artifact, or no repository on AWS, or the push fails.
        shared.deployment.DeploymentError: the stack could not be deployed.
    """
    import anyio.to_thread

    from shared.cloudformation import load_template
    from shared.deployment import DeploySettings, deploy, local_parameters
    from shared.local import endpoint_clients

    if not request.artifact.is_file():
        raise BuildError(f"Lambda artifact {request.artifact} not found: run `fleetline build`")
    declared = set(load_template(request.template).get("Parameters", {}))
    emulated = request.endpoint is not None
    values = dict(local_parameters()) if emulated else {}
    async with endpoint_clients(request.endpoint, os.environ) as aws:
        if not emulated:
            if request.repository is None:
                raise BuildError("--repository is required on AWS: the ECR repository the "
                                 "tasks pull the image from")
            credentials = await ecr_credentials(aws)
            uri = await anyio.to_thread.run_sync(lambda: push_image(
                request.image, str(request.repository), credentials=credentials,
                docker=request.docker))
            values.update(ImageUri=uri, ImageRepositoryArn=_repository_arn(request.repository))
        values.update(request.parameters)
        return await deploy(aws, DeploySettings(
            stack_name=request.stack_name, template=request.template, code=request.artifact,
            parameters={k: v for k, v in values.items() if k in declared}, emulator=emulated,
        ))
