# The API image: `remi serve` with onnxruntime + FAISS + FastAPI only. It installs the service lock
# (requirements/service.txt: the root uv.lock's versions of the base dependencies of pyproject.toml, never the `train` extra)
# with hash checking, then the project itself with --no-deps, and copies only the packages
# the service imports (remi, index, service) and the command line (cli), so the training stack cannot be imported here.
#   docker build -f docker/api.Dockerfile -t remi-match-api:0.1.0 .
# Build arguments:
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL   a PyPI mirror (unset: pypi.org); hashes are checked either way
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

# declared without a default, so they reach pip only when given
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL

# Dependencies first, from the lock (this layer is rebuilt only when the lock changes): exact
# versions, and pip refuses any file whose sha256 is not in the lock.
COPY requirements/service.txt ./requirements/service.txt
RUN pip install --require-hashes -r requirements/service.txt

# Then the code: the CLI, the artifact contract, the query path, the index and the service (--no-deps: every
# dependency is already there, from the lock).
COPY pyproject.toml README.md ./
COPY remi ./remi
COPY retrieval ./retrieval
COPY index ./index
COPY service ./service
COPY cli ./cli
RUN pip install --no-deps . && rm -rf build *.egg-info && pip check

USER remi

# Settings come from REMI_* variables (service/config.py), e.g. REMI_REDIS_URL, REMI_ONNX_THREADS.
# The CMD builds a first index version from /data/artifacts when /data/index has none (compose). Replicas
# that follow a published index run `remi serve` with REMI_WAIT_FOR_INDEX=true instead (never build; 503 until
# synced) beside `remi index sync --from s3://... --root /data/index` from this same image (deploy/k8s).
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["remi", "serve", "--host", "0.0.0.0", "--port", "8000", "--index-root", "/data/index", "--artifacts", "/data/artifacts"]
