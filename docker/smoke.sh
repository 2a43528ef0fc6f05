#!/usr/bin/env bash
# The compose stack for real, end to end: build both images, `up`, wait until the api is healthy,
# post events, recommend (a user with posted events, and a training user whose history init loaded
# into Redis: both must be personalised, not cold_start), train -> export -> reindex with the
# profiles and see the running api switch to the new index version, then `down -v`.
# One line per step: `ok <step> <seconds>`, `skip <step> <reason>` or `FAIL <step> <reason>`;
# exits non-zero on the first failure (after tearing the stack down). Not part of .ci/run: it needs
# a Docker engine and takes minutes.
#
#   docker/smoke.sh
#   TORCH_WHEEL=/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl BUILD_NETWORK=host docker/smoke.sh
#
# Environment:
#   TORCH_WHEEL      a torch wheel: copied into docker/wheels/ and built with TORCH_WHEEL_DIR (offline
#                    torch); unset: torch from TORCH_INDEX_URL (the jobs image's default index)
#   BUILD_NETWORK    `docker build --network` (e.g. host, where builds reach the index only so)
#   BUILD_ARGS       more `docker build` arguments, e.g. "--build-arg PIP_INDEX_URL=https://mirror/simple"
#   SMOKE_PROJECT    compose project name (default remi-smoke: its own containers and volume)
#   API_PORT         host port of the api (default: a free one)
#   SYNTH_USERS, SYNTH_ITEMS, TRAIN_STEPS   init's sizes (small defaults here; compose's are larger)
#   SMOKE_KEEP=1     leave the stack up (no `down -v`) to look at it
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
PROJECT=${SMOKE_PROJECT:-remi-smoke}
API_IMAGE=remi-match-api:0.1.0
JOBS_IMAGE=remi-match-jobs:0.1.0
export SYNTH_USERS=${SYNTH_USERS:-300} SYNTH_ITEMS=${SYNTH_ITEMS:-200} TRAIN_STEPS=${TRAIN_STEPS:-60}
export API_PORT=${API_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
URL=http://127.0.0.1:$API_PORT
WORK=$(mktemp -d)
LOG=$WORK/step.log
FILES=(-f docker-compose.yml)
UP=0

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
compose() { "${COMPOSE[@]}" -p "$PROJECT" "${FILES[@]}" "$@"; }

teardown() {
  if [ "$UP" = 1 ] && [ "${SMOKE_KEEP:-0}" != 1 ]; then
    local t0=$SECONDS
    if compose down -v --remove-orphans >"$LOG" 2>&1; then echo "ok down $((SECONDS - t0))"; else echo "FAIL down $(tail -1 "$LOG")"; fi
    UP=0
  fi
  rm -rf "$WORK"
}
fail() {  # fail <step> <reason>: the reason, the tail of the step's log on stderr, the api's log, then down
  echo "FAIL $1 $2"
  [ -s "$LOG" ] && tail -25 "$LOG" | sed 's/^/  | /' >&2
  [ "$UP" = 1 ] && compose logs --tail 30 init api >&2 2>&1
  teardown
  exit 1
}
step() {  # step <name> <command...>: runs it with its output in $LOG, prints ok/FAIL
  local name=$1 t0=$SECONDS
  shift
  if "$@" >"$LOG" 2>&1; then echo "ok $name $((SECONDS - t0))"; else fail "$name" "exit $? ($(tail -1 "$LOG" | cut -c1-200))"; fi
}
trap 'echo "FAIL interrupted"; teardown; exit 130' INT TERM

KEY=""  # an API key made by the `keys` service once the stack is up (the api requires one)
get() { curl -fsS --max-time 10 -H "authorization: Bearer $KEY" "$URL$1"; }
post() { curl -fsS --max-time 10 -H "authorization: Bearer $KEY" -H 'content-type: application/json' -d "$2" "$URL$1"; }
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

# ---------------------------------------------------------------------------- build
build_args=()
[ -n "${BUILD_NETWORK:-}" ] && build_args+=(--network "$BUILD_NETWORK")
# shellcheck disable=SC2206  # BUILD_ARGS is a list of words on purpose
[ -n "${BUILD_ARGS:-}" ] && build_args+=($BUILD_ARGS)
jobs_args=()
if [ -n "${TORCH_WHEEL:-}" ]; then
  [ -f "$TORCH_WHEEL" ] || fail build-jobs "TORCH_WHEEL=$TORCH_WHEEL is not a file"
  mkdir -p docker/wheels
  [ -f "docker/wheels/$(basename "$TORCH_WHEEL")" ] || cp "$TORCH_WHEEL" docker/wheels/
  jobs_args+=(--build-arg TORCH_WHEEL_DIR=docker/wheels)
fi
step build-api docker build "${build_args[@]}" -f docker/api.Dockerfile -t "$API_IMAGE" .
step build-jobs docker build "${build_args[@]}" "${jobs_args[@]}" -f docker/jobs.Dockerfile -t "$JOBS_IMAGE" .
no_torch() {
  docker run --rm --entrypoint python "$API_IMAGE" -c \
    "import importlib.util as u, sys; bad = [m for m in ('torch', 'training') if u.find_spec(m)]; sys.exit(f'importable: {bad}' if bad else 0)"
}
step api-image-has-no-torch no_torch

# ---------------------------------------------------------------------------- up
compose down -v --remove-orphans >/dev/null 2>&1  # a stack left over by an interrupted run
UP=1
step up compose up -d --no-build
healthy() {
  local id status deadline=$((SECONDS + 300))
  id=$(compose ps -q api)
  [ -n "$id" ] || { echo "no api container"; return 1; }
  while :; do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$id")
    [ "$status" = healthy ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && { echo "api is $status after 300 s"; return 1; }
    sleep 2
  done
}
step healthy healthy
KEY=$(compose run --rm -T keys auth add-key --scopes recommend,events:write,history:read --name smoke 2>/dev/null | tail -1)
[ -n "$KEY" ] || fail api-key "the keys service printed no key"
unauthorized() {  # the api refuses a request without credentials
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$URL/users/smoke-user/history")" = 401 ]
}
step requires-credentials unauthorized

# ---------------------------------------------------------------------------- serve
ITEMS=$(docker run --rm -v "${PROJECT}_remi-data:/data" --entrypoint sh "$JOBS_IMAGE" -c 'head -3 /data/artifacts/item_ids.txt')
[ -n "$ITEMS" ] || fail events "no item ids in /data/artifacts/item_ids.txt"
events() {
  local body
  body=$(printf '%s\n' $ITEMS | python3 -c 'import json, sys; print(json.dumps({"events": [{"item_id": i} for i in sys.stdin.read().split()]}))')
  post /users/smoke-user/events "$body" | json 'd["stored"]' | grep -qx 3
}
step events events
personalised() {  # personalised <user>: 200, k items, and no fallback (not cold_start, not history_unavailable)
  local out
  out=$(post /recommend "{\"user_id\": \"$1\", \"k\": 10}") || return 1
  echo "$out"
  echo "$out" | json 'len(d["items"]) == 10 and d["fallback"] is None and d["history_len"] > 0' | grep -qx True
}
step recommend personalised smoke-user
TRAIN_USER=$(docker run --rm -v "${PROJECT}_remi-data:/data" --entrypoint python "$JOBS_IMAGE" -c \
  "import pandas as pd; print(pd.read_csv('/data/synth/interactions.csv.gz', nrows=1)['user_id'][0])")
step recommend-training-user personalised "$TRAIN_USER"

# ---------------------------------------------------------------------------- reindex
BEFORE=$(get /version | json 'd["index_version"]')
export TRAIN_STEPS=$((TRAIN_STEPS + 10))  # another model than init's, so a new index version
step train compose --profile train run --rm train
step export compose --profile export run --rm export
step reindex compose --profile reindex run --rm reindex
switched() {
  local now deadline=$((SECONDS + 60))
  while :; do
    now=$(get /version | json 'd["index_version"]')
    [ -n "$now" ] && [ "$now" != "$BEFORE" ] && { echo "index_version $BEFORE -> $now"; return 0; }
    [ "$SECONDS" -ge "$deadline" ] && { echo "still $BEFORE after 60 s"; return 1; }
    sleep 1
  done
}
step api-switched switched
step recommend-after-reindex personalised smoke-user

teardown
