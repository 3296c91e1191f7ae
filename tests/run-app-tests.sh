#!/usr/bin/env bash
# Run the app's test suite (app/tests) against real services on loopback:
# a private PostgreSQL 15 cluster, a private redis-server, a ChromaDB server, and Celery
# workers that the tests start themselves.
#
# Usage: tests/run-app-tests.sh [pytest args...]      (from any directory)
#
# Everything it makes lives under <repo>/.cache (venvs, cluster, logs). Outside the repo it
# only installs Debian packages (postgresql, redis-server, python3-venv) when missing and
# runs PostgreSQL as the `postgres` system user. On exit it stops only the processes it (or
# the tests) started, by their PIDs / pidfiles. The exit code is pytest's.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$REPO/.cache"
STATE="$CACHE/app-test"
APP_VENV="$CACHE/venv-app"
CHROMA_VENV="$CACHE/venv-chroma"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PYTHON="${PYTHON:-python3}"

log() { printf '[run-app-tests] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- system packages
install_packages() {
  local missing=()
  [[ -x "$PG_BIN/initdb" ]] || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  ((${#missing[@]})) || return 0
  if [[ $EUID -ne 0 ]]; then
    log "missing packages: ${missing[*]} (run as root to install them)"; exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then apt-get update; fi
  if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
  fi
}

# ---------------------------------------------------------------- virtualenvs
# A venv per hash of its lock files, under VENV.d/<hash>, with VENV a link to the one in
# use: worktrees of branches with different locks share .cache and switch between their
# venvs without rebuilding them. The three most recently used are kept.
ensure_venv() {
  local venv=$1; shift
  local stamp dir
  stamp="$(cat "$@" | sha256sum | cut -c1-16)"
  dir="$venv.d/$stamp"
  if [[ ! -x "$dir/bin/python" || ! -f "$dir/.lock-stamp" ]]; then
    log "building $dir"
    rm -rf "$dir"
    mkdir -p "$venv.d"
    "$PYTHON" -m venv "$dir"
    local args=()
    for lock in "$@"; do args+=(-r "$lock"); done
    "$dir/bin/python" -m pip install -qq --disable-pip-version-check --no-deps "${args[@]}"
    echo "$stamp" > "$dir/.lock-stamp"
  fi
  touch "$dir/.lock-stamp"
  if [[ -d "$venv" && ! -L "$venv" ]]; then rm -rf "$venv"; fi  # a venv of the old layout
  ln -sfn "$dir" "$venv"
  # shellcheck disable=SC2012
  ls -1t "$venv.d"/*/.lock-stamp 2>/dev/null | tail -n +4 | while read -r old; do
    rm -rf "$(dirname "$old")"
  done
}

free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

as_postgres() {
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# ---------------------------------------------------------------- cleanup
LOCKED=0
PG_STARTED=0
REDIS_STARTED=0
REDIS_PIDFILE="$STATE/redis.pid"
CHROMA_PID=""

# True when PID is alive and its command line mentions WORD (guards against reused PIDs
# in stale pidfiles).
pid_matches() {
  local pid=$1 word=$2
  [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$word"
}

stop_pid() {  # stop_pid PID NAME: TERM, wait up to 15 s, then KILL
  local pid=$1 name=$2 i
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "$name ($pid) did not stop, killing"
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid f
  set +e
  ((LOCKED)) || exit "$rc"  # never touch what another run (holding the lock) started
  # Workers the tests started and could not stop (e.g. pytest was interrupted).
  for f in "$STATE"/pids/*.pid; do
    [[ -f "$f" ]] || continue
    pid="$(cat "$f")"
    if pid_matches "$pid" celery || pid_matches "$pid" uvicorn; then
      stop_pid "$pid" "test process $(basename "$f" .pid)"
    fi
    rm -f "$f"
  done
  [[ -n "$CHROMA_PID" ]] && stop_pid "$CHROMA_PID" chroma
  if ((REDIS_STARTED)) && [[ -f "$REDIS_PIDFILE" ]]; then
    stop_pid "$(cat "$REDIS_PIDFILE")" redis; rm -f "$REDIS_PIDFILE"
  fi
  if ((PG_STARTED)); then
    as_postgres "$PG_BIN/pg_ctl" -D "$STATE/pg" -m fast -w stop >/dev/null 2>&1
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup
install_packages
mkdir -p "$STATE/pids" "$STATE/tmp"
# One run at a time per checkout: a second run waits instead of sharing the services.
exec 9>"$STATE/run.lock"
if ! flock -n 9; then log "another run holds $STATE/run.lock, waiting"; flock 9; fi
LOCKED=1
export TMPDIR="$STATE/tmp"           # pytest's tmp_path and spooled uploads stay in the repo
export ANONYMIZED_TELEMETRY=False    # chroma: no telemetry attempts
ensure_venv "$APP_VENV" "$REPO/app/requirements.lock" "$REPO/app/requirements-test.lock"
ensure_venv "$CHROMA_VENV" "$REPO/app/requirements-chroma-server.lock"
log "installing the app into $APP_VENV"
"$APP_VENV/bin/python" -m pip install -qq --disable-pip-version-check --no-deps --no-build-isolation \
  --force-reinstall "$REPO/app"

# PostgreSQL: a private cluster, trust auth on 127.0.0.1 only, durability off (tests).
PGDATA="$STATE/pg"
if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
  rm -rf "$PGDATA"; mkdir -p "$PGDATA"
  [[ $EUID -eq 0 ]] && chown postgres: "$PGDATA"
  as_postgres "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
fi
mkdir -p "$STATE/pg-run"
# Trust, except for members of the role password_auth: their passwords are checked
# (scram), for tests of what the app does when a password is refused.
printf '%s\n' 'local all all trust' 'host all +password_auth 127.0.0.1/32 scram-sha-256' \
  'host all all 127.0.0.1/32 trust' >"$STATE/pg-run/pg_hba.conf"
[[ $EUID -eq 0 ]] && chown postgres: "$STATE/pg-run" "$STATE/pg-run/pg_hba.conf" "$PGDATA"
if as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
  log "stopping a PostgreSQL left running by an earlier run"
  as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi
PG_PORT="$(free_port)"
PG_STARTED=1
as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$STATE/pg-run/postgres.log" -w -t 60 \
  -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c hba_file=$STATE/pg-run/pg_hba.conf -c unix_socket_directories=$STATE/pg-run -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
  start >/dev/null

# Redis: daemonized, no persistence.
if [[ -f "$REDIS_PIDFILE" ]]; then
  pid_matches "$(cat "$REDIS_PIDFILE")" redis-server && stop_pid "$(cat "$REDIS_PIDFILE")" "stale redis"
  rm -f "$REDIS_PIDFILE"
fi
REDIS_PORT="$(free_port)"
mkdir -p "$STATE/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --pidfile "$REDIS_PIDFILE" \
  --dir "$STATE/redis" --save '' --appendonly no --logfile "$STATE/redis/redis.log"
REDIS_STARTED=1
for _ in $(seq 1 100); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping >/dev/null

# ChromaDB server: fresh data directory every run.
CHROMA_PORT="$(free_port)"
rm -rf "$STATE/chroma"; mkdir -p "$STATE/chroma"
"$CHROMA_VENV/bin/chroma" run --path "$STATE/chroma/data" --host 127.0.0.1 --port "$CHROMA_PORT" \
  > "$STATE/chroma/chroma.log" 2>&1 &
CHROMA_PID=$!
for _ in $(seq 1 300); do
  "$APP_VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$CHROMA_PORT/api/v2/heartbeat', timeout=1)" \
    >/dev/null 2>&1 && break
  kill -0 "$CHROMA_PID" 2>/dev/null || { log "chroma exited:"; tail -20 "$STATE/chroma/chroma.log" >&2; exit 1; }
  sleep 0.2
done

export AI_TEST_PG_ADMIN_URL="postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/postgres"
export AI_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export AI_TEST_CHROMA_URL="http://127.0.0.1:$CHROMA_PORT"
export AI_TEST_CHROMA_BIN="$CHROMA_VENV/bin/chroma"  # a second server (test_vectorset.py)
export AI_TEST_STATE_DIR="$STATE"
log "postgres :$PG_PORT  redis :$REDIS_PORT  chroma :$CHROMA_PORT  (logs under $STATE)"

cd "$REPO"
set +e
"$APP_VENV/bin/python" -m pytest app/tests -p no:cacheprovider "$@"
rc=$?
set -e
exit "$rc"
