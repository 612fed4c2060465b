# The production image: `newsletter serve` as an unprivileged user, no build tools.
#
# The dependencies are the locked versions (requirements.lock, every file checked
# against its hash) in the virtual environment /opt/venv; the project is installed there
# as a wheel, which carries its SQL files (package data `service.sql`). The runtime stage
# copies that environment and nothing else.
#
# Pin the base image by digest in your registry mirror, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:... .
# `make image` (.ci/image) builds it where no registry is reachable.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Certificate authorities (PEM) of a TLS-inspecting proxy between the builder and the
# package index, if there is one. Only this stage reads it: the runtime stage below
# copies /opt/venv alone, so neither the certificates nor this argument reach the image.
ARG EXTRA_CA_PEM=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/tmp/build-ca.pem \
    PYTHONDONTWRITEBYTECODE=1
RUN { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$EXTRA_CA_PEM"; } > /tmp/build-ca.pem \
 && python -m venv /opt/venv
WORKDIR /src
# Dependencies first, so this layer is rebuilt only when the lock changes. Every locked
# dependency ships manylinux wheels or is pure Python: no compiler.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY service ./service
COPY sql ./sql
# Byte-compiled on install (the root filesystem is read-only at run time). Then drop the
# installers from the environment; nothing in the image installs anything later.
RUN /opt/venv/bin/pip install --no-deps --no-compile . \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
 && /opt/venv/bin/python -m pip uninstall -y -q setuptools wheel pip

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric, unprivileged user: Kubernetes' runAsNonRoot can only verify a number.
RUN groupadd --system --gid 10001 newsletter \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin newsletter
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8000
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz (k8s/base/deployment.yaml).
CMD ["newsletter", "serve"]
