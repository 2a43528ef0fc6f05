# syntax=docker/dockerfile:1
# The jobs image: `remi` with everything (train, export, reindex, tune, evaluate, loadtest).
#   docker build -f docker/jobs.Dockerfile -t remi-match-jobs:0.1.0 .
#   docker run --rm -v remi-data:/data remi-match-jobs:0.1.0 train --help
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

# The pinned CPU build of torch first, from its own index: PyPI's wheel pulls multi-GB CUDA libraries.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# The other dependencies: the base set plus the `train` extra (torch is already satisfied).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['train']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Then the code and the shipped training settings (configs/default.json for unseen data).
COPY README.md ./
COPY remi ./remi
COPY index ./index
COPY service ./service
COPY training ./training
COPY configs ./configs
RUN pip install --no-deps . && rm -rf build *.egg-info

USER remi

ENTRYPOINT ["remi"]
CMD ["--help"]
