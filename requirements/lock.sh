#!/usr/bin/env bash
# Re-locks every lock file from pyproject.toml (run after changing a dependency):
#   ../uv.lock           the project lock at the root: universal (every platform and Python the project
#                        supports), written by `uv lock`; the source of every version below
#   ../requirements.txt  the same versions for Python 3.11 on Linux x86_64 (CI, the README's install, pip),
#                        everything including the dev extra, a sha256 for every file of each release
#   ../pylock.toml       requirements.txt's resolution in the standard PEP 751 format
#   service.txt, train.txt  the two Docker images' subsets (base + remote; base + train + remote) of the same versions
# torch is left out of every lock ([tool.uv] exclude-dependencies, --no-emit-package): its right build
# (CPU, CUDA x.y) depends on the machine, so it is installed first, by hand or by a Dockerfile build argument.
set -euo pipefail
cd "$(dirname "$0")"
(cd .. && uv lock --quiet)
# uv.lock's versions, as constraints of the platform-specific compiles below
constraints=uv-lock-versions.txt
trap 'rm -f "$constraints"' EXIT
(cd .. && uv export --frozen --all-extras --no-hashes --no-header --no-emit-project --quiet) > "$constraints"
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-emit-package torch
        --quiet -c "$constraints" --custom-compile-command requirements/lock.sh
        --no-config)  # [tool.uv] excludes torch with its dependencies (for uv.lock); here only torch is left out
# /opt/wheels (where it exists) holds the CPU torch wheel, so torch's own requirements resolve without CUDA packages.
[ -d /opt/wheels ] && common+=(--find-links /opt/wheels)
uv pip compile ../pyproject.toml --extra dev "${common[@]}" -o ../requirements.txt
uv pip compile ../pyproject.toml --extra dev "${common[@]}" -c ../requirements.txt --format pylock.toml -o ../pylock.toml
uv pip compile ../pyproject.toml --extra remote "${common[@]}" -c ../requirements.txt -o service.txt
uv pip compile ../pyproject.toml --extra train --extra remote "${common[@]}" -c ../requirements.txt -o train.txt
