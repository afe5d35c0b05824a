FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md topics.yaml resilience.yaml ./
COPY processors ./processors
RUN pip install --no-cache-dir .
ENTRYPOINT ["processors"]
