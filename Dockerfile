# syntax=docker/dockerfile:1
# The daemon's image (compose.yaml, deploy/): two stages, so the runtime has no
# compiler, pip, setuptools, wheel or build tools, only a virtualenv of pinned,
# hash-checked wheels.  Build it with a PEP 440 version that setuptools-scm derives from
# git on the host (the context has no .git): on a tag v1.2.3 it is 1.2.3, between tags
# 1.2.4.devN+gHASH, on a clone without tags 0.1.0.devN+gHASH (README, Deploying):
#   docker build --build-arg VERSION="$(.venv/bin/python -m setuptools_scm)" -t consumergen .
# (`git describe` is no such version: "69a005c" and "v1.2.3-4-gHASH" fail the build.)
# Dependencies come from requirements.lock (scripts/lock writes it with uv: one universal
# lock for amd64 and arm64 made on any machine; see scripts/lock for why uv).  The image
# installs it with plain pip --require-hashes, so uv is not needed here.
# tests/unit/test_image.py checks this file statically (no container engine on the
# project's machines: it is read, not built, there).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.lock requirements-build.lock ./
# Wheels only: a missing wheel fails the build instead of compiling from an sdist.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --only-binary=:all: -r requirements.lock \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes -r requirements-build.lock
COPY pyproject.toml README.md LICENSE ./
COPY service ./service
# The build context has no .git (.dockerignore): the version is passed in, else
# setuptools-scm's fallback (pyproject.toml) is used.
ARG VERSION=0.1.0.dev0
# The last install into /opt/venv: then its own pip and setuptools go (the service
# never installs anything at run time, and a scanner should find no installer in it).
RUN SETUPTOOLS_SCM_PRETEND_VERSION_FOR_CONSUMER_GENERATION_SERVICE="${VERSION}" \
    /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
 && /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel

FROM ${PYTHON_IMAGE} AS runtime
# A numeric user (10001, outside any distribution's range): Kubernetes' runAsNonRoot
# can only verify a numeric USER.  /data is its writable volume and the default SQLite
# location; everything else may be read-only (deploy/ sets readOnlyRootFilesystem).
# The base image's own pip, setuptools and wheel (and ensurepip's copies) go too.
RUN groupadd --system --gid 10001 consumergen \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin consumergen \
 && install -d -o 10001 -g 10001 -m 0750 /data \
 && python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
 && rm -rf /usr/local/lib/python3*/ensurepip/_bundled
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONSUMERGEN_DATABASE_URL=sqlite+aiosqlite:////data/consumergen.sqlite3 \
    CONSUMERGEN_HEALTH_HOST=0.0.0.0 \
    CONSUMERGEN_HEALTH_PORT=8000 \
    CONSUMERGEN_LOG_FORMAT=json
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8000
# Liveness, on whatever port the container was given; urlopen raises on a non-2xx.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('CONSUMERGEN_HEALTH_PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["consumergen"]
CMD ["run"]
