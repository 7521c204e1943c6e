# The fleetline image: every ECS service of deploy/template.yaml runs it with its own command
# (`python -m shared.hosts.worker <module>:<attr>`), and so do the local glue (`fleetline up
# --no-services`) and, from the `emulator` target, the AWS emulator of compose.yaml.
#
#   docker build -t fleetline .                                    # python:3.11-slim base
#   DOCKER_BUILDKIT=1 docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt \
#       --build-arg BASE=local/debian:bookworm -t fleetline .      # a TLS-re-signing proxy, no registry
#   docker build --target emulator -t fleetline-emulator .
#
# `fleetline build` runs these (docs/containers.md). No `# syntax=` line: it would pull a
# frontend image, and BuildKit's built-in frontend has what this file uses.
#
# BASE: any Debian-like image whose `python3` is Python 3.11+ with the venv module; the
# builder and the final stage use the same one, so the venv's interpreter is the final one's.
ARG BASE=python:3.11-slim

# ------------------------------------------------------------------------------ builder
FROM ${BASE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# A CA bundle for a proxy that re-signs TLS is a build secret (--secret id=ca,src=FILE): it
# is mounted for the pip runs only and never lands in a layer.
COPY requirements-runtime.lock /tmp/requirements-runtime.lock
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -q --no-deps --require-hashes -r /tmp/requirements-runtime.lock
COPY pyproject.toml README.md /src/
COPY shared /src/shared
COPY services /src/services
# The project itself (not editable), with its entry points (events, CLI plugins); then the
# build backend and the installer leave the venv: the image needs neither.
RUN /opt/venv/bin/pip install -q --no-deps --no-build-isolation /src \
    && /opt/venv/bin/pip uninstall -q -y setuptools pip \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
    && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib

# The emulator's venv: the same, plus the `local` extra (moto server at the locked version,
# which the fixes in shared/emulator/ are verified against, and waitress).
FROM builder AS emulator-builder
COPY requirements-local.lock /tmp/requirements-local.lock
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/emulator \
    && /opt/emulator/bin/pip install -q --no-deps --require-hashes -r /tmp/requirements-local.lock \
    && /opt/emulator/bin/pip install -q --no-deps --no-build-isolation /src \
    && /opt/emulator/bin/pip uninstall -q -y setuptools pip \
    && find /opt/emulator -name '__pycache__' -prune -exec rm -rf {} + \
    && /opt/emulator/bin/python -m compileall -q -j 0 /opt/emulator/lib

# ------------------------------------------------------------------------------ emulator
FROM ${BASE} AS emulator
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="fleetline-emulator" \
      org.opencontainers.image.description="moto server with fleetline's fixes (python -m shared.emulator)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=emulator-builder /opt/emulator /opt/emulator
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin fleetline
USER 10001
ENV PATH=/opt/emulator/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MOTO_PORT=5000
EXPOSE 5000
ENTRYPOINT ["python", "-m", "shared.emulator"]
CMD ["-H", "0.0.0.0", "-p", "5000"]

# ------------------------------------------------------------------------------ worker
FROM ${BASE} AS worker
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="fleetline" \
      org.opencontainers.image.description="fleetline workers: python -m shared.hosts.worker <module>:<attr>" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/venv /opt/venv
# Non-root, and nothing written outside /tmp: ECS runs it with a read-only root file system
# (ReadonlyRootFilesystem), compose with `read_only: true` and a tmpfs on /tmp.
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin fleetline
USER 10001
WORKDIR /tmp
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    FLEETLINE_STATE_DIR=/tmp/fleetline
# The command is the service's (the task definition's Command); this one shows the usage.
CMD ["python", "-m", "shared.hosts.worker"]
