#!/usr/bin/env bash
# Re-locks requirements.txt (the project-root lock: everything, dev extra included), pylock.toml (the
# same resolution as a PEP 751 lock) and
# requirements/{service,train}.txt from pyproject.toml (run after changing a dependency).
# Python 3.11 on Linux x86_64, like CI and both images; hashes for every file of each pinned release.
# torch is left out of every lock (--no-emit-package): its right build (CPU, CUDA x.y) depends on the
# machine, so it is installed first, by hand or by a Dockerfile build argument (see README).
# service.txt and train.txt are constrained by ../requirements.txt, so the three sets agree on every version.
set -euo pipefail
cd "$(dirname "$0")"
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-emit-package torch
        --quiet)
# /opt/wheels (where it exists) holds the CPU torch wheel, so torch's own requirements resolve without CUDA packages.
[ -d /opt/wheels ] && common+=(--find-links /opt/wheels)
uv pip compile ../pyproject.toml --extra dev "${common[@]}" -o ../requirements.txt
# The same resolution in the standard lock format (PEP 751), for uv and other pylock readers.
uv pip compile ../pyproject.toml --extra dev "${common[@]}" -c ../requirements.txt --format pylock.toml -o ../pylock.toml
uv pip compile ../pyproject.toml "${common[@]}" -c ../requirements.txt -o service.txt
uv pip compile ../pyproject.toml --extra train "${common[@]}" -c ../requirements.txt -o train.txt
