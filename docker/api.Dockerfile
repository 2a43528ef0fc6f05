# syntax=docker/dockerfile:1
# The API image: `remi serve` with onnxruntime + FAISS + FastAPI only. It installs the base
# dependencies of pyproject.toml (never the `train` extra) and copies only the packages the
# service imports (remi, index, service), so the training stack cannot be imported here.
#   docker build -f docker/api.Dockerfile -t remi-match-api:0.1.0 .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 remi \
 && useradd --system --uid 10001 --gid remi --home-dir /app --no-create-home --shell /usr/sbin/nologin remi \
 && mkdir -p /app /data \
 && chown remi:remi /data

WORKDIR /app

# Dependencies first (this layer is rebuilt only when pyproject.toml changes): the base set only.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Then the code: the CLI, the artifact contract, the index and the service.
COPY README.md ./
COPY remi ./remi
COPY index ./index
COPY service ./service
RUN pip install --no-deps . && rm -rf build *.egg-info

USER remi

# Settings come from REMI_* variables (service/config.py), e.g. REMI_REDIS_URL, REMI_ONNX_THREADS.
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["remi", "serve", "--host", "0.0.0.0", "--port", "8000", "--index-root", "/data/index", "--artifacts", "/data/artifacts"]
