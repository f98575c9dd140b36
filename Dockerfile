# The operator image: small (no torch, no trainer, no compilers in the final stage), non-root,
# installed from uv.lock exactly. Build from the repository root:
#   buildah build -t selfreward-operator:0.1.0 .     (or docker build)
# PYTHON_IMAGE is any Debian-based CPython 3.11 image your builder can reach.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.8
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_PROJECT_ENVIRONMENT=/opt/selfreward \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
# The workspace: the lock, the operator project, the CRD it reads its schema from (the package
# links to crds/), and the trainer's manifest (a workspace member the lock names; not installed).
COPY pyproject.toml uv.lock ./
COPY crds/ crds/
COPY trainer/pyproject.toml trainer/pyproject.toml
COPY operator/ operator/
RUN uv sync --frozen --no-dev --no-editable --package selfreward-operator

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/selfreward /opt/selfreward
ENV PATH=/opt/selfreward/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["selfreward-operator"]
