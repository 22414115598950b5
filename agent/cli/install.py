"""Render the supervisord configuration that ``agent local install`` prints.

Pure: the command builds an :class:`InstallPlan` from its options and prints
:func:`render` on stdout and :func:`render_notice` on stderr. The plan never carries a
secret; the output says where secrets go instead.

supervisord reads the file with ``configparser`` (``;`` or ``#`` after whitespace starts
an inline comment, values are one line), then %-expands ``command=``, ``environment=``
and paths, then splits ``command=`` with POSIX ``shlex`` and ``environment=`` with
non-POSIX ``shlex`` (quotes kept and then stripped, no backslash escapes). Every value
written here survives all of that exactly, or :func:`render` raises ValueError.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from agent.settings.defaults import WORKER_GROUP

POLLER = "agent"  # `supervisorctl start agent` must name this single process
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
SUGGESTED_CONFIG = Path("/etc/local-agent/agent.toml")
# The config file key that holds each secret (see agent/settings/configfile.py).
_TOML_KEYS = {
    "PREFECT_API_KEY": "key",
    "PREFECT__CLOUD__AGENT__AUTH_TOKEN": "key",
    "PREFECT_API_AUTH_STRING": "auth-string",
    "PREFECT_API_URL": "api",  # when it holds a password
}
ENV_VARS = "PREFECT__CLOUD__AGENT__ENV_VARS"  # --env values: may be secrets, never written
# Line breaks for file reading or str.splitlines(), and NUL (no argv or env may hold it).
_BREAKS = re.compile("[\n\r\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_INLINE_COMMENT = re.compile(r"\s[;#]")  # configparser would cut the value there
_SAFE_ARG = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")
_SUN_PATH_MAX = 107  # bytes in a Linux AF_UNIX socket path (108 with the NUL)


@dataclass(frozen=True)
class InstallPlan:
    agent_exe: str  # absolute path of the `agent` console script
    poller_args: tuple[str, ...]  # argv after `agent local start` (already secret-free)
    worker_args: tuple[str, ...]  # argv after `agent worker` (already secret-free)
    poller_env: Mapping[str, str]  # extra environment for the poller only
    workers: int
    run_dir: Path  # supervisor socket/pid/log, program logs, metrics/ dir
    include_only: bool = False  # only the [program:...] sections, for conf.d/
    user: str | None = None  # `user=` for both programs when supervisord runs as root
    omitted: tuple[str, ...] = ()  # secrets given to `install` and NOT written (env names)
    config_file: Path | None = None  # the --config TOML file, if any
    worker_stop_wait: int = 600  # stopwaitsecs of workers


def env_json(values: Mapping[str, str]) -> str:
    """JSON of ``values`` that :func:`render` can always write into ``environment=``.

    Non-ASCII, ``'``, ``;`` and ``#`` become ``\\uXXXX`` escapes (same JSON value), so
    the text has no line break, no ``'`` to clash with its quoting and no inline-comment
    marker.
    """
    # ASCII only: JSON keeps U+2028 and friends raw, which would be line breaks here.
    text = json.dumps(dict(values), separators=(",", ":"))
    return text.replace("'", "\\u0027").replace(";", "\\u003b").replace("#", "\\u0023")


def render(plan: InstallPlan) -> str:
    """The configuration file, ending in a newline. ValueError if it cannot be written."""
    _check(plan)
    run = plan.run_dir
    lines = _header(plan)
    if not plan.include_only:
        sock = _path(run / "supervisor.sock")
        lines += [
            "[unix_http_server]",
            f"file={sock}",
            "chmod=0700",
            # The poller runs as `user` and must reach the socket to start the workers.
            *([f"chown={plan.user}"] if plan.user else []),
            "",
            "[supervisord]",
            f"logfile={_path(run / 'supervisord.log')}",
            f"pidfile={_path(run / 'supervisord.pid')}",
            f"childlogdir={_path(run)}",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{sock}",
            "",
        ]
    metrics = {METRICS_ENV: str(run / "metrics")}
    user = [f"user={plan.user}"] if plan.user else []
    lines += [
        f"[program:{POLLER}]",
        f"command={_command([plan.agent_exe, 'local', 'start', *plan.poller_args])}",
        "; Started by `supervisorctl start agent`, not with supervisord, so that an operator",
        "; decides when this host begins claiming runs.",
        "autostart=false",
        "autorestart=unexpected",
        "; 0: --max-polls reached or a clean stop; 78: bad configuration, which a restart",
        "; cannot fix. Anything else is a crash and is restarted.",
        "exitcodes=0,78",
        "; Alive this long counts as started; a config error exits before, so supervisor",
        "; gives up after startretries instead of looping.",
        "startsecs=3",
        "startretries=3",
        "; The poller drains nothing: on TERM it stops claiming and exits within a second.",
        "stopsignal=TERM",
        "stopwaitsecs=10",
        "; Its whole process group may go: flow runs belong to workers, in their own sessions.",
        "stopasgroup=true",
        "killasgroup=true",
        *user,
        "; Metrics files of every process (prometheus_client multiprocess mode), set before",
        "; any agent code runs; the rest keeps --env values out of `ps`.",
        f"environment={_environment({**metrics, **plan.poller_env})}",
        "redirect_stderr=true",
        f"stdout_logfile={_path(run / 'agent.log')}",
        "stdout_logfile_maxbytes=50MB",
        "stdout_logfile_backups=5",
        "",
        f"[program:{WORKER_GROUP}]",
        f"command={_command([plan.agent_exe, 'worker', *plan.worker_args])}",
        "process_name=%(program_name)s_%(process_num)02d",
        f"numprocs={plan.workers}",
        "; Started by the poller (through supervisor's RPC) when `start agent` runs.",
        "autostart=false",
        "autorestart=true",
        "exitcodes=0,78",
        "startsecs=3",
        "startretries=3",
        "; TERM makes a worker take no new run and wait for its current flow to finish,",
        "; this long; then supervisor kills the worker, but the flow (own session) lives on.",
        "stopsignal=TERM",
        f"stopwaitsecs={plan.worker_stop_wait}",
        "; Only the worker gets signals, so stopping a worker never kills a running flow.",
        "stopasgroup=false",
        "killasgroup=false",
        *user,
        f"environment={_environment(metrics)}",
        "redirect_stderr=true",
        f"stdout_logfile={_path(run)}/%(program_name)s_%(process_num)02d.log",
        "stdout_logfile_maxbytes=50MB",
        "stdout_logfile_backups=5",
    ]
    return "\n".join(lines) + "\n"


def render_notice(plan: InstallPlan) -> str | None:
    """The omitted-secrets note for stderr, or None when nothing was omitted."""
    if not plan.omitted:
        return None
    names = ", ".join(plan.omitted)
    return (
        f"agent local install: not written to the configuration: {names}. "
        f"Put each in {_where_config(plan)}, or in supervisord's environment "
        "(e.g. a systemd EnvironmentFile=)."
    )


def _header(plan: InstallPlan) -> list[str]:
    run, workers = plan.run_dir, f"{WORKER_GROUP}:*"
    if plan.include_only:
        ctl = "supervisorctl"
        text = [
            f"supervisor programs for local-agent {__version__} on this host, generated by",
            "`agent local install --include-only`. Save as e.g.",
            "/etc/supervisor/conf.d/local-agent.conf, then `supervisorctl update`.",
            "The host's supervisord must have the RPC interface ([rpcinterface:supervisor])",
            "and a [unix_http_server] enabled, as Debian's does: the poller starts the",
            "workers through it, so the programs' user must be able to open that socket",
            "(e.g. chown=USER there).",
        ]
    else:
        ctl = "supervisorctl -c FILE"
        text = [
            f"supervisord configuration for local-agent {__version__} on this host,",
            "generated by `agent local install`. Save it as FILE and start with:",
            "  supervisord -c FILE    (under systemd: supervisord -n -c FILE, and",
            "                          KillMode=process so flows outlive a restart)",
        ]
    text += [
        f"  {ctl} start agent    (the poller then starts {workers})",
        f"Stop claiming: `{ctl} stop agent`; claimed runs still finish.",
        f"Stop all: `{ctl} stop agent {workers}` (workers drain for up to",
        f"{plan.worker_stop_wait} s).",
        f"Create {run} first, owned by the agent's user, mode 700: it holds",
        "the logs and metrics files" + ("." if plan.include_only else ", socket and pid file."),
    ]
    text += [
        "Run containment: each flow run gets a cgroup below the agent's own (memory,",
        "CPU and process limits; the whole tree killed on cancel or timeout). Under",
        "systemd give the unit Delegate=yes, so that it may create them and systemd",
        "leaves them alone (deploy/local-agent.service does, and says why).",
    ]
    if plan.poller_env:
        text.append("environment= holds the --env values: keep this file mode 600.")
    if plan.omitted:
        names = ", ".join(plan.omitted)
        env_lines = ", ".join(f"{n}=..." for n in plan.omitted)
        note = (
            f"SECRETS NOT WRITTEN HERE: {names}. Put each in {_where_config(plan)}, or in"
            " supervisord's own environment, which the programs inherit (e.g. a systemd"
            f" EnvironmentFile= with {env_lines}). Never in this file."
        )
        text += ["", *textwrap.wrap(note, 86, break_long_words=False, break_on_hyphens=False)]
    return [f"; {line}".rstrip() for line in text] + [""]


def _where_config(plan: InstallPlan) -> str:
    keys = ", ".join(
        'env = { NAME = "..." }' if n == ENV_VARS else f'{_TOML_KEYS[n]} = "..."'
        for n in plan.omitted
        if n in _TOML_KEYS or n == ENV_VARS
    )
    keys = f" as {keys}" if keys else ""
    if plan.config_file:
        return f"the config file {plan.config_file}{keys} (chmod 600, owned by the agent's user)"
    return (
        f"a config file such as {SUGGESTED_CONFIG}{keys} (chmod 600, owned by the agent's"
        " user; add --config with it and install again)"
    )


def _check(plan: InstallPlan) -> None:
    if not os.path.isabs(plan.agent_exe):
        raise ValueError(f"agent executable {plan.agent_exe!r} must be an absolute path")
    if not plan.run_dir.is_absolute():
        raise ValueError(f"run dir {plan.run_dir} must be an absolute path")
    if plan.workers < 1:
        raise ValueError(f"workers must be at least 1, not {plan.workers}")
    if plan.worker_stop_wait < 1:
        raise ValueError(f"worker stop wait must be at least 1 s, not {plan.worker_stop_wait}")
    if plan.user is not None and not _USER.fullmatch(plan.user):
        raise ValueError(f"user {plan.user!r} is not a valid user name")
    if METRICS_ENV in plan.poller_env:
        raise ValueError(f"{METRICS_ENV} is set by the configuration itself")
    if not plan.include_only and len(os.fsencode(plan.run_dir / "supervisor.sock")) > _SUN_PATH_MAX:
        raise ValueError(f"run dir {plan.run_dir} is too long for a unix socket path")
    # Comments are not expanded but must stay one line each.
    for name in (*plan.omitted, str(plan.config_file or "")):
        if _BREAKS.search(name):
            raise ValueError(f"{name!r} contains a line break")


def _command(argv: Iterable[str]) -> str:
    return " ".join(_quote_arg(a) for a in argv)


def _quote_arg(arg: str) -> str:
    """One argument as POSIX shlex reads it back, safe from configparser and %-expansion."""
    if _BREAKS.search(arg):
        raise ValueError(f"argument {arg!r} contains a line break or NUL")
    if _SAFE_ARG.fullmatch(arg):
        quoted = arg
    else:
        quoted = "'" + arg.replace("'", "'\"'\"'") + "'"
        # Whitespace is only inside '...' here: close and reopen the quotes before a ; or #
        # so that configparser does not take it for an inline comment.
        quoted = re.sub(r"(?<=\s)(?=[;#])", "''", quoted)
    return quoted.replace("%", "%%")


def _environment(env: Mapping[str, str]) -> str:
    return ",".join(f"{k}={_env_value(k, v)}" for k, v in env.items())


def _env_value(key: str, value: str) -> str:
    # supervisor's non-POSIX shlex has no escapes: a value is quoted with a quote character
    # it does not contain, and the parser strips every quote off both of its ends.
    # Errors name the key only: a value may be secret.
    if not _ENV_NAME.fullmatch(key):
        raise ValueError(f"environment name {key!r} is not a valid variable name")
    problem = None
    if _BREAKS.search(value):
        problem = "a line break or NUL"
    elif _INLINE_COMMENT.search(value):
        problem = "whitespace before ';' or '#'"
    elif value and (value[0] in "'\"" or value[-1] in "'\""):
        problem = "a quote at its start or end"
    elif '"' in value and "'" in value:
        problem = "both kinds of quote"
    if problem:
        raise ValueError(
            f"the value of {key} has {problem}, which supervisord cannot read back"
            " (for JSON, agent.install.env_json writes a form it can)"
        )
    q = "'" if '"' in value else '"'
    return q + value.replace("%", "%%") + q


def _path(path: Path) -> str:
    # No %: supervisor 4.3 expands a program's log path twice, other fields once.
    text = str(path)
    if _BREAKS.search(text) or _INLINE_COMMENT.search(text) or "%" in text:
        raise ValueError(f"path {text!r} cannot be written into a supervisord configuration")
    if text != text.rstrip():  # configparser strips the value
        raise ValueError(f"path {text!r} cannot end in whitespace here")
    return text
