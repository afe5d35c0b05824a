# Multi-stage, non-root image of the processors, installed from uv.lock (the versions the tests ran).
#
#   docker build -t insurance-processors .
#   docker run --rm insurance-processors --version
#
# Stage 1 installs uv from its hash-pinned wheel, then the locked dependencies, then the project,
# into /opt/venv.  Stage 2 carries only that environment and the catalogues it reads at start-up.
FROM python:3.11-slim AS build
COPY tools/uv-bootstrap.txt /tmp/uv-bootstrap.txt
RUN pip install --no-cache-dir --no-deps --require-hashes -r /tmp/uv-bootstrap.txt
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /src
# dependencies first (a layer that changes only with the lock), then the project itself
COPY pyproject.toml uv.lock README.md LICENSE ./
RUN uv sync --frozen --no-install-project --no-editable --python /usr/local/bin/python3
COPY processors ./processors
# the development tooling: the sandbox services and the development broker (docker-compose.yml)
COPY processors_dev ./processors_dev
RUN uv sync --frozen --no-editable --python /usr/local/bin/python3

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --home-dir /app processors \
 && mkdir -p /app/var && chown 10001:10001 /app/var
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY topics.yaml resilience.yaml treaties.yaml ./
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["processors"]
CMD ["--help"]
