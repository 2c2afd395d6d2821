# syntax=docker/dockerfile:1
# The headrace worker image: `docker build -t headrace:0.1.0 .`, then `docker run headrace:0.1.0 run CONFIG`.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in a layer of their own: a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself (no dev extras), then the deployments, models and sample requests.
COPY pipelines ./pipelines
COPY stream ./stream
RUN pip install --no-deps . && rm -rf build ./*.egg-info
COPY configs ./configs
COPY models ./models
COPY data ./data

RUN groupadd --system --gid 10001 headrace \
    && useradd --system --uid 10001 --gid headrace --no-create-home --shell /usr/sbin/nologin headrace
USER headrace

# metrics.port: /metrics, /healthz, /readyz (replica i of `--replicas N` listens on 9108 + i).
EXPOSE 9108
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2)"]

ENTRYPOINT ["headrace"]
CMD ["--help"]
