#!/usr/bin/env bash
# The local-agent demo, on this machine, in one command.
#
#   scripts/demo.sh        set up (venv, local Prefect server with SQLite, demo
#                          deployment), start supervisord and the agent, run 3 flows
#   scripts/demo.sh down   stop everything it started; leaves no process behind
#   scripts/demo.sh status show what is running
#
# Safe to run again: what is already running is reused. Everything lives in .demo/.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${DEMO_DIR:-$ROOT/.demo}"
VENV="${VENV:-$ROOT/.venv}"
PREFECT_PORT="${DEMO_PREFECT_PORT:-4200}"
AGENT_PORT="${DEMO_AGENT_PORT:-9410}"
RUNS="${DEMO_RUNS:-3}"

export PATH="$VENV/bin:$PATH"
export PREFECT_HOME="$STATE/prefect"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export AGENT_POOL="${AGENT_POOL:-local-agent-demo}"
export AGENT_WORKERS="${AGENT_WORKERS:-2}"
export AGENT_SPOOL_DIR="$STATE/spool"
export AGENT_RUN_DIR="$STATE/run"
export AGENT_ADDRESS="http://127.0.0.1:$AGENT_PORT"
CONF="$ROOT/supervisord.conf"
SERVER_PID="$STATE/prefect-server.pid"

say() { printf '==> %s\n' "$*"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
server_up() { curl -fsS -m 2 "$PREFECT_API_URL/health" >/dev/null 2>&1; }

setup_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtual environment $VENV"
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.local-agent-demo"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        say "installing local-agent and prefect==3.8.8 (first time: a few minutes)"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[demo]" 2>&1 \
            | grep -v "^WARNING: Location" || true
        "$VENV/bin/python" -c 'import agent, prefect' && touch "$stamp"
    fi
}

start_server() {
    if server_up; then
        say "Prefect server already up at $PREFECT_API_URL"
        return
    fi
    mkdir -p "$PREFECT_HOME"
    say "starting Prefect server at $PREFECT_API_URL (SQLite in $PREFECT_HOME)"
    # setsid: the server gets its own process group, so `down` can stop all of it.
    setsid prefect server start --host 127.0.0.1 --port "$PREFECT_PORT" \
        >"$STATE/prefect-server.log" 2>&1 </dev/null &
    echo $! >"$SERVER_PID"
    for _ in $(seq 1 180); do
        server_up && return
        alive "$SERVER_PID" || { tail -20 "$STATE/prefect-server.log"; exit 1; }
        sleep 1
    done
    echo "Prefect server did not come up; see $STATE/prefect-server.log" >&2
    exit 1
}

start_agent() {
    mkdir -p "$AGENT_RUN_DIR"
    if alive "$AGENT_RUN_DIR/supervisord.pid"; then
        say "supervisord already running"
    else
        say "starting supervisord -c supervisord.conf"
        supervisord -c "$CONF"
        for _ in $(seq 1 50); do [ -S "$AGENT_RUN_DIR/supervisor.sock" ] && break; sleep 0.1; done
    fi
    say "supervisorctl start agent"
    supervisorctl -c "$CONF" start agent || supervisorctl -c "$CONF" status agent | grep -q RUNNING
    for _ in $(seq 1 30); do
        curl -fsS -m 2 "$AGENT_ADDRESS/api/health" >/dev/null 2>&1 && break
        sleep 1
    done
    supervisorctl -c "$CONF" status || true
}

up() {
    mkdir -p "$STATE"
    setup_venv
    start_server
    start_agent
    say "running $RUNS demo flow runs"
    python "$ROOT/examples/demo.py" --pool "$AGENT_POOL" --runs "$RUNS"
    cat <<EOT

The agent is running under supervisord.
  Prefect UI/API  http://127.0.0.1:$PREFECT_PORT   (pool: $AGENT_POOL)
  Health          $AGENT_ADDRESS/api/health
  Metrics         $AGENT_ADDRESS/metrics
  Logs            $AGENT_RUN_DIR/*.log
  More runs       PREFECT_API_URL=$PREFECT_API_URL $VENV/bin/python examples/demo.py --pool $AGENT_POOL
  Status          scripts/demo.sh status
  Stop all        scripts/demo.sh down
EOT
}

down() {
    if alive "$AGENT_RUN_DIR/supervisord.pid"; then
        local pid
        pid="$(cat "$AGENT_RUN_DIR/supervisord.pid")"
        say "stopping the agent (workers drain), then supervisord"
        supervisorctl -c "$CONF" stop agent 'agent-worker:*' || true
        supervisorctl -c "$CONF" shutdown || kill "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    if alive "$SERVER_PID"; then
        say "stopping the Prefect server"
        local pid
        pid="$(cat "$SERVER_PID")"
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$SERVER_PID"
    # Anything still running with the demo's environment (e.g. a flow left running)?
    local left=""
    for env in /proc/[0-9]*/environ; do
        pid="${env#/proc/}"; pid="${pid%/environ}"
        [ "$pid" = "$$" ] && continue
        # Others' processes (Permission denied) and ones that just ended (No such process)
        # are not the demo's: the group's 2>/dev/null also covers the < redirection.
        if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -qxF "AGENT_RUN_DIR=$AGENT_RUN_DIR"; then
            left="$left $pid"
        fi
    done
    if [ -n "$left" ]; then
        say "stopping leftover processes:$left"
        kill -KILL $left 2>/dev/null || true
    fi
    say "stopped; nothing of the demo is running"
}

status() {
    if alive "$AGENT_RUN_DIR/supervisord.pid"; then
        supervisorctl -c "$CONF" status || true
        curl -sS -m 2 "$AGENT_ADDRESS/api/health" && echo
    else
        echo "supervisord: not running"
    fi
    if server_up; then echo "Prefect server: up at $PREFECT_API_URL"; else echo "Prefect server: down"; fi
}

case "${1:-up}" in
    up) up ;;
    down|stop) down ;;
    status) status ;;
    *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac
