# syntax=docker/dockerfile:1
# The production image: `newsletter serve` as an unprivileged user, no build tools.
#
# Layout: the code stays a source tree in /app (service/ next to sql/), because
# service/migrations.py and service/queries.py find the SQL files at
# Path(service/__file__).parent.parent / "sql". The dependencies live in the virtual
# environment /opt/venv; the project itself is installed there in editable "compat"
# mode, which only adds /app to sys.path (a .pth file) and writes the `newsletter`
# console script. PYTHONPATH=/app says the same thing explicitly.
#
# Pin the base image by digest in your registry mirror, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:... .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /app
# Dependencies first, against a placeholder package, so this layer is rebuilt only
# when pyproject.toml changes. Every dependency ships manylinux wheels: no compiler.
COPY pyproject.toml README.md ./
RUN mkdir service && touch service/__init__.py \
 && /opt/venv/bin/pip install --config-settings editable_mode=compat -e . \
 && rm -rf service build
COPY service ./service
COPY sql ./sql
# Byte-compile now: the root filesystem is read-only at run time. Then drop the
# installers from the environment; nothing in the image installs anything later.
RUN /opt/venv/bin/python -m compileall -q /app/service \
 && /opt/venv/bin/python -m pip uninstall -y -q setuptools wheel pip

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric, unprivileged user: Kubernetes' runAsNonRoot can only verify a number.
RUN groupadd --system --gid 10001 newsletter \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin newsletter
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz (k8s/base/deployment.yaml).
CMD ["newsletter", "serve"]
