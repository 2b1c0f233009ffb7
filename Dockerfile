# driftswitch worker image: `docker build -t driftswitch .`
# Runs `driftswitch run` against real Kafka (see docker-compose.yml and docs/operations.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DRIFTSWITCH_LOG_FORMAT=json

WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY detectors ./detectors
# The service extra brings the worker's dependencies (detectors, metrics, HTTP).
RUN pip install ".[service]" && rm -rf /src

WORKDIR /
# The join's state directory (--state-dir); a named volume mounted here inherits the owner.
RUN mkdir -p /var/lib/driftswitch && chown nobody /var/lib/driftswitch
USER nobody
# The HTTP API: /healthz, /metrics, /api/v1/flags (bind with --web-host 0.0.0.0 in a container).
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/healthz', timeout=2)"]
CMD ["driftswitch", "--help"]
