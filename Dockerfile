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
# The build tools (uv, setuptools) live in /opt/build and stay in this stage. Every install
# is from a lock, with hashes; bytecode is compiled at install (a read-only root file system
# could not cache it at run time).
FROM ${BASE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 \
    UV_LINK_MODE=copy UV_CACHE_DIR=/var/cache/uv
COPY requirements-build.lock requirements-runtime.lock requirements-local.lock /tmp/locks/
# A CA bundle for a proxy that re-signs TLS is a build secret (--secret id=ca,src=FILE): it
# is mounted for the downloads only and never lands in a layer.
RUN --mount=type=secret,id=ca --mount=type=cache,target=/var/cache/uv \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca; fi; \
    python3 -m venv /opt/build \
    && /opt/build/bin/pip install -q --no-deps --require-hashes -r /tmp/locks/requirements-build.lock \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/build/bin/uv pip install -q --python /opt/venv/bin/python --no-deps --require-hashes \
        --compile-bytecode -r /tmp/locks/requirements-runtime.lock
COPY pyproject.toml README.md /src/
COPY shared /src/shared
COPY services /src/services
# The project itself as a wheel (not editable), with its entry points (events, CLI plugins).
RUN /opt/build/bin/pip wheel -q --no-deps --no-build-isolation -w /tmp/wheels /src \
    && /opt/build/bin/uv pip install -q --python /opt/venv/bin/python --no-deps \
        --compile-bytecode /tmp/wheels/*.whl

# The emulator's venv: the same, plus the `local` extra (moto server at the locked version,
# which the fixes in shared/emulator/ are verified against, and waitress). cfn-lint and its
# symbolic maths serve only ValidateTemplate, which deployments skip: left uncompiled, they
# would be most of the build's time.
FROM builder AS emulator-builder
RUN --mount=type=secret,id=ca --mount=type=cache,target=/var/cache/uv \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi; \
    python3 -m venv --without-pip /opt/emulator \
    && /opt/build/bin/uv pip install -q --python /opt/emulator/bin/python --no-deps \
        --require-hashes -r /tmp/locks/requirements-local.lock \
    && /opt/build/bin/uv pip install -q --python /opt/emulator/bin/python --no-deps \
        /tmp/wheels/*.whl \
    && /opt/emulator/bin/python -m compileall -q -j 0 \
        -x '/(cfnlint|sympy|networkx|mpmath|tests?)/' /opt/emulator/lib

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
