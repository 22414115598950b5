#!/usr/bin/env bash
# Install local-agent on a bare-metal host: a system user, its directories, a secrets
# file, the supervisord configuration (from `agent local install`), a systemd unit for
# supervisord and the log rotation note. Idempotent: run it again at will; it changes
# only what differs and never overwrites the secrets file.
#
#   python3 -m venv /opt/local-agent && /opt/local-agent/bin/pip install /path/to/local-agent
#   sudo deploy/install.sh --pool my-pool --api http://prefect.example:4200/api --workers 4
#
# Options (or their environment variables):
#   --venv DIR             LOCAL_AGENT_VENV   the agent's venv (default /opt/local-agent)
#   --pool NAME            AGENT_POOL         work pool           } needed to write the
#   --api URL              PREFECT_API_URL    Prefect API URL     } configuration
#   --workers N            AGENT_WORKERS      flow runs at once (default: number of CPUs)
#   --agent-address URL    AGENT_ADDRESS      health/metrics (default http://127.0.0.1:9410)
#   --root DIR             DESTDIR            install under DIR instead of / (staging,
#                                             tests): no user is created, nothing is
#                                             chown'ed, systemctl is not called, no root
#                                             needed
# Without --pool and --api an existing configuration is kept as it is. With them it is
# written again (the previous one, if different, is kept as supervisord.conf.bak).
set -euo pipefail
umask 022

readonly AGENT_USER=local-agent
readonly CONF_DIR=/etc/local-agent
readonly CONFIG=$CONF_DIR/supervisord.conf
readonly SECRETS=$CONF_DIR/secrets.env
readonly STATE_DIR=/var/lib/local-agent  # also the user's home (flows' ~/.prefect)
readonly SPOOL=$STATE_DIR/spool
readonly LOG_DIR=/var/log/local-agent
readonly RUN_DIR=/run/local-agent  # RuntimeDirectory=local-agent in the unit
readonly UNIT=/etc/systemd/system/local-agent.service
readonly LOGROTATE=/etc/logrotate.d/local-agent
readonly SHIPPED_VENV=/opt/local-agent  # the venv path written in deploy/local-agent.service

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=${DESTDIR:-/}
VENV=${LOCAL_AGENT_VENV:-$SHIPPED_VENV}
POOL=${AGENT_POOL:-}
API=${PREFECT_API_URL:-}
WORKERS=${AGENT_WORKERS:-}
ADDRESS=${AGENT_ADDRESS:-}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die() {
    echo "install.sh: $*" >&2
    exit 2
}

while (($#)); do
    case $1 in
        --root=* | --venv=* | --pool=* | --api=* | --workers=* | --agent-address=*)
            set -- "${1%%=*}" "${1#*=}" "${@:2}"
            continue
            ;;
        --root | --venv | --pool | --api | --workers | --agent-address)
            (($# >= 2)) || die "$1 needs a value"
            case $1 in
                --root) ROOT=$2 ;;
                --venv) VENV=$2 ;;
                --pool) POOL=$2 ;;
                --api) API=$2 ;;
                --workers) WORKERS=$2 ;;
                --agent-address) ADDRESS=$2 ;;
            esac
            shift 2
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[[ -n $ROOT ]] || die "--root must not be empty"
mkdir -p -- "$ROOT"
ROOT=$(cd -- "$ROOT" && pwd)
STAGED=false
[[ $ROOT == / ]] || STAGED=true
if ! $STAGED && ((EUID != 0)); then
    die "run as root (or stage into a directory with --root DIR)"
fi

VENV=${VENV%/}
# Written into the unit (systemd expands % and $ there) and supervisord.conf: keep it plain.
[[ $VENV =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "--venv must be an absolute path of letters, digits and ._/+- (got '$VENV')"
for exe in agent supervisord supervisorctl; do
    [[ -x $VENV/bin/$exe ]] || die "$VENV/bin/$exe not found: create the venv and install local-agent into it first"
done
[[ -z $WORKERS || $WORKERS =~ ^[1-9][0-9]*$ ]] || die "--workers must be a whole number >= 1 (got '$WORKERS')"
# Check everything before changing anything.
WRITE_CONFIG=false
if [[ -n $POOL || -n $API ]]; then
    [[ -n $POOL && -n $API ]] || die "--pool and --api go together"
    WRITE_CONFIG=true
    ADDRESS=${ADDRESS:-http://127.0.0.1:9410}
elif [[ -n $WORKERS || -n $ADDRESS ]]; then
    die "--workers and --agent-address need --pool and --api (the configuration is written from them)"
elif [[ ! -f ${ROOT%/}$CONFIG ]]; then
    die "no $CONFIG yet: give --pool and --api to write it"
fi

CHANGES=0
changed() {
    CHANGES=$((CHANGES + 1))
    echo "  changed: $*"
}
skipped() { echo "  skipped: $*"; }

# The path of $1 under the install root.
at() { printf '%s%s' "${ROOT%/}" "$1"; }

# Give $1 mode $2 and, unless staged, owner $3:$4, saying what it fixed.
fix_attrs() {
    local path=$1 mode=$2 owner=$3 group=$4 target
    target=$(at "$path")
    if (($(stat -c '0%a' -- "$target") != mode)); then
        chmod "$mode" -- "$target"
        changed "$path: mode $mode"
    fi
    if ! $STAGED && [[ $(stat -c '%U:%G' -- "$target") != "$owner:$group" ]]; then
        chown "$owner:$group" -- "$target"
        changed "$path: owner $owner:$group"
    fi
}

ensure_dir() {
    local path=$1 target
    target=$(at "$path")
    if [[ ! -d $target ]]; then
        mkdir -p -- "$(dirname -- "$target")"
        mkdir -m "$2" -- "$target"
        changed "$path: created"
    fi
    fix_attrs "$@"
}

# Install file $1 as $2 (mode $3, owner $4:$5) unless it already has that content.
install_file() {
    local src=$1 path=$2 target tmp
    target=$(at "$path")
    if [[ -f $target ]] && cmp -s -- "$src" "$target"; then
        fix_attrs "${@:2}"
        return 1 # unchanged
    fi
    mkdir -p -- "$(dirname -- "$target")"
    tmp=$(mktemp -- "$target.XXXXXX") # 0600 until it has its final mode and owner
    cat -- "$src" >"$tmp"
    chmod "$3" -- "$tmp"
    $STAGED || chown "$4:$5" -- "$tmp"
    mv -f -- "$tmp" "$target"
    changed "$path: written"
}

WORK=$(mktemp -d)
trap 'rm -rf -- "$WORK"' EXIT

echo "local-agent: installing into $ROOT (venv $VENV)"

# 1. The system user and group.
if $STAGED; then
    skipped "user and group $AGENT_USER, and file owners (staged into $ROOT)"
else
    if ! getent group "$AGENT_USER" >/dev/null; then
        groupadd --system "$AGENT_USER"
        changed "group $AGENT_USER: created"
    fi
    if ! getent passwd "$AGENT_USER" >/dev/null; then
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        useradd --system --gid "$AGENT_USER" --home-dir "$STATE_DIR" --no-create-home \
            --shell "$nologin" --comment "local-agent (Prefect flow runs)" "$AGENT_USER"
        changed "user $AGENT_USER: created"
    fi
fi

# 2. Directories. /run/local-agent is systemd's (RuntimeDirectory=), made at each start.
ensure_dir "$CONF_DIR" 0750 root "$AGENT_USER"
ensure_dir "$STATE_DIR" 0700 "$AGENT_USER" "$AGENT_USER"
ensure_dir "$SPOOL" 0700 "$AGENT_USER" "$AGENT_USER"
ensure_dir "$LOG_DIR" 0750 "$AGENT_USER" "$AGENT_USER"

# 3. The secrets file: created once from this template, never overwritten.
if [[ -e $(at "$SECRETS") ]]; then
    fix_attrs "$SECRETS" 0600 root root
else
    cat >"$WORK/secrets.env" <<'EOF'
# local-agent credentials: read by systemd (EnvironmentFile= in local-agent.service)
# and put in supervisord's environment; the poller, the workers and (through the
# workers) the flow runs get them from there. Never put them in supervisord.conf or on
# a command line (argv shows in `ps`). Keep this file root:root, mode 0600.
# One KEY=value per line; then `systemctl restart local-agent` and `start agent`.
#
# Prefect Cloud:
#PREFECT_API_KEY=pnu_...
# Self-hosted Prefect server with basic auth:
#PREFECT_API_AUTH_STRING=user:pass
EOF
    install_file "$WORK/secrets.env" "$SECRETS" 0600 root root || true
fi

# 4. The supervisord configuration, from this venv's own `agent local install`.
CONFIG_CHANGED=false
if $WRITE_CONFIG; then
    args=(local install --pool "$POOL" --api "$API" --spool "$SPOOL" --run-dir "$RUN_DIR"
        --agent-address "$ADDRESS")
    [[ -z $WORKERS ]] || args+=(--workers "$WORKERS")
    # A clean environment: nothing from this shell (AGENT_*, PREFECT_*, a key) gets baked in.
    if ! env -i PATH=/usr/bin:/bin PYTHONUTF8=1 "$VENV/bin/agent" "${args[@]}" \
        >"$WORK/generated.conf" 2>"$WORK/generated.err"; then
        cat "$WORK/generated.err" >&2
        die "agent local install failed"
    fi
    # Log files go to $LOG_DIR (persistent; rotated by supervisord itself), not to the
    # run dir, which is a tmpfs removed at every stop. Exactly these four lines name them.
    moved='^(logfile|childlogdir|stdout_logfile)='
    [[ $(grep -cE "$moved$RUN_DIR(/|$)" "$WORK/generated.conf") == 4 ]] ||
        die "unexpected output of agent local install (log paths): update deploy/install.sh"
    {
        echo "; Installed by deploy/install.sh as $CONFIG: what"
        echo "; \`agent local install\` printed (below), except that the log files are in"
        echo "; $LOG_DIR (persistent, rotated by supervisord), not in $RUN_DIR,"
        echo "; which systemd creates at each start (RuntimeDirectory=) for the socket, the"
        echo "; pid file and the metrics files. Secrets: $SECRETS (EnvironmentFile=)."
        echo ";"
        sed -E "s#$moved$RUN_DIR(/|\$)#\\1=$LOG_DIR\\2#" "$WORK/generated.conf"
    } >"$WORK/supervisord.conf"
    if [[ -f $(at "$CONFIG") ]] && ! cmp -s "$WORK/supervisord.conf" "$(at "$CONFIG")"; then
        cp -p -- "$(at "$CONFIG")" "$(at "$CONFIG").bak"
        changed "$CONFIG.bak: the previous configuration"
    fi
    if install_file "$WORK/supervisord.conf" "$CONFIG" 0640 root "$AGENT_USER"; then
        CONFIG_CHANGED=true
    fi
else
    fix_attrs "$CONFIG" 0640 root "$AGENT_USER"
    skipped "$CONFIG: kept as it is (give --pool and --api to write it again)"
fi

# 5. The systemd unit (with this venv) and the log rotation note.
UNIT_CHANGED=false
sed "s#$SHIPPED_VENV/bin/#$VENV/bin/#g" "$HERE/local-agent.service" >"$WORK/local-agent.service"
if install_file "$WORK/local-agent.service" "$UNIT" 0644 root root; then
    UNIT_CHANGED=true
fi
if $STAGED || [[ -d /etc/logrotate.d ]]; then
    install_file "$HERE/logrotate.conf" "$LOGROTATE" 0644 root root || true
else
    skipped "$LOGROTATE: logrotate is not installed (supervisord rotates the logs anyway)"
fi

# 6. systemd itself.
SYSTEMD=false
if ! $STAGED && command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    SYSTEMD=true
fi
if $UNIT_CHANGED; then
    if $SYSTEMD; then
        systemctl daemon-reload
        changed "systemctl daemon-reload"
    elif $STAGED; then
        skipped "systemctl daemon-reload (staged into $ROOT)"
    else
        skipped "systemctl daemon-reload: systemd is not running on this machine"
    fi
fi

CTL="$VENV/bin/supervisorctl -c $CONFIG"
if ((CHANGES == 0)); then
    echo "local-agent: nothing changed"
else
    echo "local-agent: $CHANGES change(s)"
fi
if $CONFIG_CHANGED && $SYSTEMD && systemctl is-active --quiet local-agent; then
    echo "The configuration changed: apply it with \`systemctl restart local-agent\`"
    echo "(workers drain first; running flows carry on) and then \`$CTL start agent\`."
fi
if $SYSTEMD; then
    cat <<EOF
Next: put the API key or auth string in $SECRETS if the API needs one, then
  systemctl enable --now local-agent     # supervisord only; no run is claimed yet
  $CTL start agent                       # claim runs (again after every restart)
EOF
elif ! $STAGED; then
    cat <<EOF
Without systemd, start supervisord as $AGENT_USER yourself, with the variables of
$SECRETS in its environment, after creating $RUN_DIR (owner $AGENT_USER, mode 0700):
  $VENV/bin/supervisord -c $CONFIG && $CTL start agent
EOF
fi
