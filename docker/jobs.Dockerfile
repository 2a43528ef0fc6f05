# The jobs image: `remi` with everything (train, export, reindex, history load, tune, evaluate,
# loadtest). It installs torch (CPU build), then the train lock (requirements/train.txt: every
# other dependency, torch's own included, hash-checked; the root uv.lock's versions), then the project with --no-deps.
#   docker build -f docker/jobs.Dockerfile -t remi-match-jobs:0.1.0 .
#   docker run --rm -v remi-data:/data remi-match-jobs:0.1.0 train --help
#
# Where torch comes from (build arguments; the default is the PyTorch CPU index):
#   TORCH_SPEC=torch==2.13.0                               what to install (keep it a CPU build:
#                                                          PyPI's Linux wheel pulls GBs of CUDA)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   the index it comes from (a mirror of it)
#   TORCH_WHEEL_DIR=docker/wheels                          a folder of the build context holding
#                                                          the wheel: installed from there only
#                                                          (--no-index), for air-gapped builds
# e.g. cp torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl docker/wheels/   (gitignored)
#      docker build -f docker/jobs.Dockerfile --build-arg TORCH_WHEEL_DIR=docker/wheels -t remi-match-jobs:0.1.0 .
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL                     a PyPI mirror for the lock and the build
#                                                          backend (hashes are checked either way)
# torch is installed in a first stage, so that a wheel copied from the context never stays in a
# layer of the final image; the final image gets the virtual environment it was installed in.

FROM python:3.11-slim-bookworm AS torch
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEEL_DIR=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# always copied (an empty folder but for its README unless you put wheels there), used only when
# TORCH_WHEEL_DIR is set. --no-deps: torch's dependencies are in the lock, installed hash-checked.
COPY ${TORCH_WHEEL_DIR:-docker/wheels}/ /tmp/wheels/
RUN python -m venv /opt/venv \
 && if [ -n "$TORCH_WHEEL_DIR" ]; then \
        /opt/venv/bin/pip install --no-deps --no-index --find-links /tmp/wheels "$TORCH_SPEC"; \
    else \
        /opt/venv/bin/pip install --no-deps --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    fi

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

RUN groupadd --system --gid 10001 remi \
 && useradd --system --uid 10001 --gid remi --home-dir /app --no-create-home --shell /usr/sbin/nologin remi \
 && mkdir -p /app /data \
 && chown remi:remi /data

WORKDIR /app

# declared without a default, so they reach pip only when given
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL

# The environment holding the CPU build of torch, then the other dependencies from the lock
# (rebuilt only when torch's source or the lock changes).
COPY --from=torch /opt/venv /opt/venv
COPY requirements/train.txt ./requirements/train.txt
RUN pip install --require-hashes -r requirements/train.txt

# Then the code and the shipped training settings (configs/default.json for unseen data).
COPY pyproject.toml README.md ./
COPY remi ./remi
COPY retrieval ./retrieval
COPY index ./index
COPY service ./service
COPY cli ./cli
COPY loadtest ./loadtest
COPY training ./training
COPY configs ./configs
RUN pip install --no-deps . && rm -rf build *.egg-info && pip check

USER remi

ENTRYPOINT ["remi"]
CMD ["--help"]
