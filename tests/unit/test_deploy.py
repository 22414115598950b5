"""deploy/: the systemd unit, install.sh and the log rotation note agree with each other,
with what `agent local install` writes and with the repository's supervisord.conf.

No systemd needed: the unit is parsed as an INI file, and install.sh runs for real with
``--root`` into a temporary directory (no user is created, nothing outside it changes).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from supervisor.options import ServerOptions

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT_FILE = DEPLOY / "local-agent.service"
INSTALL_SH = DEPLOY / "install.sh"
LOGROTATE_FILE = DEPLOY / "logrotate.conf"
# The venv running these tests has `agent` and `supervisord`: install.sh's --venv.
VENV = Path(sys.executable).parent.parent

# Where install.sh puts things (paths on the target host).
CONFIG = "/etc/local-agent/supervisord.conf"
SECRETS = "/etc/local-agent/secrets.env"
SPOOL = "/var/lib/local-agent/spool"
LOG_DIR = "/var/log/local-agent"
RUN_DIR = "/run/local-agent"
SHIPPED_VENV = "/opt/local-agent"
API = "http://127.0.0.1:4200/api"
# install.sh must hand it over intact (no % in it: Prefect refuses that in a pool name,
# and so does `agent local install`; test_install covers % in arguments)
POOL = "pool ;# ü"
SECRET_KEY = "pnu_d3pl0yS3cr3tKeyValue"
SECRET_AUTH = "admin:d3pl0y-hunter2"

# supervisord's per-program settings that decide how the agent starts, restarts and
# stops; the repository's configuration and `agent local install` must agree on them.
PROGRAM_SETTINGS = (
    "autostart",
    "autorestart",
    "exitcodes",
    "startsecs",
    "startretries",
    "stopsignal",
    "stopwaitsecs",
    "stopasgroup",
    "killasgroup",
    "redirect_stderr",
    "stdout_logfile_maxbytes",
    "stdout_logfile_backups",
)
# systemd settings that would break flows (see the unit's comments), and those that
# imply NoNewPrivileges=yes (systemd.exec(5)), which breaks sudo, ping, fusermount.
BREAKS_FLOWS = ("PrivateTmp", "ProtectHome", "NoNewPrivileges", "MemoryDenyWriteExecute")
IMPLY_NO_NEW_PRIVILEGES = (
    "DynamicUser",
    "LockPersonality",
    "PrivateDevices",
    "ProtectClock",
    "ProtectHostname",
    "ProtectKernelLogs",
    "ProtectKernelModules",
    "ProtectKernelTunables",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "SystemCallLog",
)


class _UnitParser(configparser.RawConfigParser):
    """A systemd unit as INI: keys keep their case, no inline comments, a repeated key
    keeps its last value (strict=False)."""

    def __init__(self) -> None:
        super().__init__(strict=False, interpolation=None, comment_prefixes=("#", ";"))

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def read_unit(text: str) -> dict[str, dict[str, str]]:
    parser = _UnitParser()
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


def seconds(span: str) -> float:
    """A systemd time span (``660``, ``11min``, ``10min 60s``, ``infinity``) in seconds."""
    if span.strip() == "infinity":
        return float("inf")
    units: dict[str, float] = {
        "": 1,
        "s": 1,
        "sec": 1,
        "second": 1,
        "seconds": 1,
        "m": 60,
        "min": 60,
    }
    units |= {"minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600}
    units |= {"hours": 3600, "ms": 0.001, "msec": 0.001}
    parts = re.findall(r"(\d+)\s*([a-z]*)", span)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == re.sub(r"\s", "", span), span
    return sum(int(n) * units[u] for n, u in parts)


def exec_start_script(exec_start: str) -> str:
    """The script of ``ExecStart=/bin/sh -c '...'`` as sh gets it: systemd joins lines
    ending in a backslash, then turns %% into % (specifiers) and $$ into $ (variables)."""
    argv = shlex.split(exec_start.replace("\\\n", " "))
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3, argv
    # A lone $ or % would be systemd's, not the shell's.
    assert "$" not in argv[2].replace("$$", "") and "%" not in argv[2].replace("%%", "")
    return argv[2].replace("%%", "%").replace("$$", "$")


def supervisord_argv(exec_start: str) -> list[str]:
    """The command the ExecStart= script ends with (``exec supervisord ...``)."""
    _, found, command = exec_start_script(exec_start).rpartition("exec ")
    assert found, exec_start
    return shlex.split(command)


def install_sh_constants() -> dict[str, str]:
    """install.sh's ``readonly NAME=value`` constants, ``$OTHER`` references expanded."""
    found: dict[str, str] = {}
    for name, value in re.findall(r"^readonly (\w+)=(\S+)", INSTALL_SH.read_text(), re.M):
        found[name] = re.sub(r"\$(\w+)", lambda m: found[m.group(1)], value)
    return found


def run_install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # A controlled environment: credentials and agent settings that must NOT end up in
    # any file, and nothing from the caller's shell (AGENT_WORKERS, ...).
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PREFECT_API_KEY": SECRET_KEY,
        "PREFECT_API_AUTH_STRING": SECRET_AUTH,
        "AGENT_LOG_LEVEL": "debug",
    }
    proc = subprocess.run(
        ["bash", str(INSTALL_SH), "--root", str(root), "--venv", str(VENV), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def at(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under ``root``: mode, mtime and content (files)."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() else b""
        found[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, content)
    return found


def load_supervisor(text: str, tmp: Path) -> ServerOptions:
    """Parse a configuration the way supervisord does at startup, with the host's
    /var/log/local-agent and /run/local-agent mapped into ``tmp`` (it checks they exist)."""
    for name in ("log", "run"):
        (tmp / name).mkdir(exist_ok=True)
    text = text.replace(LOG_DIR, str(tmp / "log")).replace(RUN_DIR, str(tmp / "run"))
    conf = tmp / "supervisord.conf"
    conf.write_text(text, encoding="utf-8")
    options = ServerOptions()
    options.configfile = str(conf)
    options.process_config(do_usage=False)
    return options


def programs(options: ServerOptions) -> dict[str, Any]:
    return {p.name: p for g in options.process_group_configs for p in g.process_configs}


def worst_shutdown_seconds(options: ServerOptions) -> int:
    """supervisord stops its groups one after the other, the processes of a group
    together, each within its stopwaitsecs (then SIGKILL)."""
    return sum(
        max(p.stopwaitsecs for p in g.process_configs) for g in options.process_group_configs
    )


@dataclass(frozen=True)
class Installed:
    root: Path
    output: str
    unit: dict[str, dict[str, str]]
    config_text: str


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("host")
    proc = run_install(root, "--pool", POOL, "--api", API, "--workers", "3")
    unit_text = at(root, "/etc/systemd/system/local-agent.service").read_text()
    return Installed(root, proc.stdout, read_unit(unit_text), at(root, CONFIG).read_text())


@pytest.fixture
def repo_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ServerOptions:
    """The repository's env-driven supervisord.conf, as supervisord reads it."""
    run = tmp_path / "repo-run"
    run.mkdir()
    for name, value in {
        "PREFECT_API_URL": API,
        "AGENT_POOL": "p",
        "AGENT_WORKERS": "3",
        "AGENT_SPOOL_DIR": str(tmp_path / "spool"),
        "AGENT_ADDRESS": "http://127.0.0.1:9410",
        "AGENT_RUN_DIR": str(run),
    }.items():
        monkeypatch.setenv(name, value)
    options = ServerOptions()
    options.configfile = str(REPO / "supervisord.conf")
    options.process_config(do_usage=False)
    return options


@pytest.fixture
def generated_options(installed: Installed, tmp_path: Path) -> ServerOptions:
    """What install.sh wrote, from `agent local install`, as supervisord reads it."""
    return load_supervisor(installed.config_text, tmp_path)


# --- the unit ------------------------------------------------------------------------


def test_paths_here_are_install_shs() -> None:
    constants = install_sh_constants()
    assert constants["AGENT_USER"] == "local-agent"
    assert (constants["CONFIG"], constants["SECRETS"], constants["SPOOL"]) == (
        CONFIG,
        SECRETS,
        SPOOL,
    )
    assert (constants["LOG_DIR"], constants["RUN_DIR"]) == (LOG_DIR, RUN_DIR)
    assert constants["SHIPPED_VENV"] == SHIPPED_VENV


def test_unit_signals_only_supervisord_so_flows_survive_a_stop() -> None:
    service = read_unit(UNIT_FILE.read_text())["Service"]
    # control-group (the default) or mixed would signal the flow runs too: they share
    # the unit's cgroup even in their own sessions.
    assert service["KillMode"] == "process"
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"  # supervisord's shutdown
    # An OOM-killed flow must not stop the whole agent (DefaultOOMPolicy=stop).
    assert service["OOMPolicy"] == "continue"
    assert service["Restart"] == "on-failure"


def test_unit_hardening_leaves_flows_alone() -> None:
    service = read_unit(UNIT_FILE.read_text())["Service"]
    for key in (*BREAKS_FLOWS, *IMPLY_NO_NEW_PRIVILEGES):
        assert service.get(key, "no") in ("no", "false", "0", ""), key
    assert service.get("ProtectSystem", "no") in ("no", "yes", "full")  # never strict
    assert not any(k in service for k in ("ReadOnlyPaths", "InaccessiblePaths"))


def test_stop_timeout_outlasts_supervisords_whole_shutdown(
    repo_options: ServerOptions, generated_options: ServerOptions
) -> None:
    timeout = seconds(read_unit(UNIT_FILE.read_text())["Service"]["TimeoutStopSec"])
    for options in (repo_options, generated_options):
        waits = [p.stopwaitsecs for p in programs(options).values()]
        assert timeout > max(waits)
        # Every group in turn at its longest, plus time to SIGKILL and reap.
        assert timeout >= worst_shutdown_seconds(options) + 30
    assert worst_shutdown_seconds(generated_options) == 610  # poller 10 + workers 600


def test_unit_runs_supervisord_in_the_foreground_on_the_installed_config(
    installed: Installed,
) -> None:
    shipped = read_unit(UNIT_FILE.read_text())["Service"]
    assert supervisord_argv(shipped["ExecStart"])[0] == f"{SHIPPED_VENV}/bin/supervisord"
    argv = supervisord_argv(installed.unit["Service"]["ExecStart"])
    assert argv[0] == f"{VENV}/bin/supervisord" and os.access(argv[0], os.X_OK)
    assert "-n" in argv or "--nodaemon" in argv  # the main process systemd tracks
    config = argv[argv.index("-c") + 1]
    assert config == CONFIG
    assert at(installed.root, config).is_file()
    # install.sh changes nothing else in the unit than the venv.
    installed_text = at(installed.root, "/etc/systemd/system/local-agent.service").read_text()
    expected = UNIT_FILE.read_text().replace(f"{SHIPPED_VENV}/bin/", f"{VENV}/bin/")
    assert installed_text == expected


def test_unit_delegates_its_cgroup_for_run_containment() -> None:
    """The agent makes a cgroup per flow run below the unit's: systemd must delegate the
    subtree, and must not make /sys/fs/cgroup read-only for the unit."""
    service = read_unit(UNIT_FILE.read_text())["Service"]
    assert service["Delegate"] == "yes"
    assert service.get("ProtectControlGroups", "no") in ("no", "false", "0", "")


def _run_exec_start(tmp_path: Path, proc_self_cgroup: str) -> tuple[Path, list[str]]:
    """Run the ExecStart= script against a fake /sys/fs/cgroup (tmp_path/cgroup, whose
    cgroup.subtree_control files point at stdout) and a fake /proc/self/cgroup; it execs
    `echo` instead of supervisord. Returns the fake root and the lines printed."""
    script = exec_start_script(read_unit(UNIT_FILE.read_text())["Service"]["ExecStart"])
    assert script.count("/sys/fs/cgroup") == 1 and script.count("/proc/self/cgroup") == 1
    root = tmp_path / "cgroup"
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_self_cgroup)
    script = script.replace("/sys/fs/cgroup", str(root)).replace("/proc/self/cgroup", str(proc))
    script = script.replace(f"exec {SHIPPED_VENV}/bin/supervisord", "exec echo supervisord")
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0 and not done.stderr, done
    return root, done.stdout.splitlines()


UNIT_CGROUP = "/system.slice/local-agent.service"


@pytest.mark.parametrize("own", [UNIT_CGROUP, f"{UNIT_CGROUP}/supervisor"])
def test_exec_start_moves_supervisord_to_a_sub_cgroup_on_v2(tmp_path: Path, own: str) -> None:
    """cgroup v2, delegated: systemd starts the command in the unit's cgroup (or, with
    DelegateSubgroup=supervisor, in its `supervisor` child). It ends up in `supervisor`
    and enables the limit controllers for the unit cgroup's children."""
    unit = tmp_path / "cgroup" / UNIT_CGROUP.lstrip("/")
    unit.mkdir(parents=True)
    (unit / "cgroup.procs").touch()
    (unit / "cgroup.subtree_control").symlink_to("/dev/stdout")  # each write, printed
    _, printed = _run_exec_start(tmp_path, f"1:name=systemd:{UNIT_CGROUP}\n0::{own}\n")
    assert printed == ["+memory", "+cpu", "+pids", f"supervisord -n -c {CONFIG}"]
    assert (unit / "supervisor" / "cgroup.procs").read_text().strip().isdigit()
    assert not (unit / "supervisor" / "supervisor").exists()


@pytest.mark.parametrize(
    "proc_self_cgroup",
    [
        f"4:memory:{UNIT_CGROUP}\n1:name=systemd:{UNIT_CGROUP}\n",  # v1: no 0:: line
        f"4:memory:{UNIT_CGROUP}\n0::{UNIT_CGROUP}\n",  # hybrid: v2 not at /sys/fs/cgroup
        "0::/\n",  # the root cgroup: never moved out of
    ],
)
def test_exec_start_leaves_other_hosts_alone(tmp_path: Path, proc_self_cgroup: str) -> None:
    root, printed = _run_exec_start(tmp_path, proc_self_cgroup)
    assert printed == [f"supervisord -n -c {CONFIG}"]
    assert not root.exists()


def test_unit_user_secrets_and_run_dir_match_what_install_sh_creates(
    installed: Installed, tmp_path: Path
) -> None:
    unit = installed.unit
    service = unit["Service"]
    assert service["User"] == service["Group"] == install_sh_constants()["AGENT_USER"]
    # No "-" prefix: a missing secrets file fails the start instead of running keyless.
    assert service["EnvironmentFile"] == SECRETS
    secrets = at(installed.root, SECRETS)
    assert secrets.is_file() and mode(secrets) == 0o600
    # /run/local-agent comes from systemd; the configuration puts socket and pid there.
    assert service["RuntimeDirectory"] == "local-agent" and RUN_DIR == "/run/local-agent"
    assert service["RuntimeDirectoryMode"] == "0700"
    assert not at(installed.root, RUN_DIR).exists()
    section = load_supervisor(installed.config_text, tmp_path).configroot.supervisord
    run = tmp_path / "run"
    assert section.server_configs[0]["file"] == f"{run}/supervisor.sock"
    assert section.pidfile == f"{run}/supervisord.pid"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_accepts_the_unit(installed: Installed) -> None:
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    unit = at(installed.root, "/etc/systemd/system/local-agent.service")
    proc = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=30
    )
    # Unknown keys and bad values are only warnings (exit 0): none may name this unit.
    complaints = [line for line in proc.stderr.splitlines() if "local-agent.service" in line]
    assert proc.returncode == 0 and not complaints, proc.stderr


# --- install.sh ----------------------------------------------------------------------


def test_install_sh_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(INSTALL_SH)], check=True, timeout=10)
    assert os.access(INSTALL_SH, os.X_OK)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        proc = subprocess.run([shellcheck, str(INSTALL_SH)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_install_creates_the_layout_with_private_modes(installed: Installed) -> None:
    root = installed.root
    expected = {
        "/etc/local-agent": 0o750,
        CONFIG: 0o640,
        SECRETS: 0o600,
        "/var/lib/local-agent": 0o700,
        SPOOL: 0o700,
        LOG_DIR: 0o750,
        "/etc/systemd/system/local-agent.service": 0o644,
        "/etc/logrotate.d/local-agent": 0o644,
    }
    for path, want in expected.items():
        assert mode(at(root, path)) == want, path
    assert at(root, "/etc/logrotate.d/local-agent").read_bytes() == LOGROTATE_FILE.read_bytes()
    # The secrets file is a template: comments only, nothing set, never a value.
    lines = at(root, SECRETS).read_text().splitlines()
    assert all(not line.strip() or line.startswith("#") for line in lines)
    assert "PREFECT_API_KEY" in "".join(lines) and "PREFECT_API_AUTH_STRING" in "".join(lines)
    # Staged: no user, no systemctl, and it says so.
    assert "skipped: user and group local-agent" in installed.output
    assert "skipped: systemctl daemon-reload" in installed.output


def test_no_secret_or_caller_setting_reaches_any_file(installed: Installed) -> None:
    for path in installed.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (SECRET_KEY, SECRET_AUTH, SECRET_AUTH.split(":")[1]):
                assert secret.encode() not in data, path
    # `agent local install` ran in a clean environment: AGENT_LOG_LEVEL was not baked in.
    assert "--log-level" not in installed.config_text


def test_installed_config_is_agent_local_install_with_the_logs_moved(
    installed: Installed, tmp_path: Path
) -> None:
    argv = [str(VENV / "bin" / "agent"), "local", "install", "--pool", POOL, "--api", API]
    argv += ["--spool", SPOOL, "--run-dir", RUN_DIR, "--agent-address", "http://127.0.0.1:9410"]
    argv += ["--workers", "3"]
    printed = subprocess.run(
        argv,
        env={"PATH": "/usr/bin:/bin", "PYTHONUTF8": "1"},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    moved, count = re.subn(
        rf"^(logfile|childlogdir|stdout_logfile)={RUN_DIR}(/|$)",
        rf"\1={LOG_DIR}\2",
        printed,
        flags=re.MULTILINE,
    )
    assert count == 4
    header, _, body = installed.config_text.partition(";\n")
    assert body == moved and "deploy/install.sh" in header
    assert all(line.startswith("; ") for line in header.splitlines())

    procs = programs(load_supervisor(installed.config_text, tmp_path))
    assert sorted(procs) == ["agent", "agent-worker_00", "agent-worker_01", "agent-worker_02"]
    log = tmp_path / "log"
    assert procs["agent"].stdout_logfile == f"{log}/agent.log"
    assert procs["agent-worker_02"].stdout_logfile == f"{log}/agent-worker_02.log"
    poller = shlex.split(procs["agent"].command)
    assert poller[:3] == [f"{VENV}/bin/agent", "local", "start"]
    assert poller[poller.index("--pool") + 1] == POOL
    assert poller[poller.index("--spool") + 1] == SPOOL
    assert procs["agent"].environment["PROMETHEUS_MULTIPROC_DIR"] == f"{tmp_path}/run/metrics"


def copy_of(installed: Installed, tmp_path: Path) -> Path:
    """The fixture's installed host, copied with modes and times (faster than installing)."""
    root = tmp_path / "host"
    shutil.copytree(installed.root, root, symlinks=True)
    return root


def test_second_run_changes_nothing_and_never_overwrites_the_secrets(
    installed: Installed, tmp_path: Path
) -> None:
    root = copy_of(installed, tmp_path)
    args = ("--pool", POOL, "--api", API, "--workers", "3")  # as the fixture's first run
    before = snapshot(root)

    again = run_install(root, *args)
    assert snapshot(root) == before
    assert "changed:" not in again.stdout and "nothing changed" in again.stdout
    # Without --pool/--api the configuration is kept as it is.
    kept = run_install(root)
    assert snapshot(root) == before and "nothing changed" in kept.stdout

    # The operator's secrets stay; a loosened mode is tightened again.
    secrets = at(root, SECRETS)
    secrets.write_text("PREFECT_API_KEY=operator-value\n")
    secrets.chmod(0o644)
    fixed = run_install(root, *args)
    assert secrets.read_text() == "PREFECT_API_KEY=operator-value\n"
    assert mode(secrets) == 0o600 and f"changed: {SECRETS}: mode 0600" in fixed.stdout


def test_new_settings_rewrite_the_config_and_keep_the_previous_one(tmp_path: Path) -> None:
    run_install(tmp_path, "--pool", POOL, "--api", API, "--workers", "2")
    first = at(tmp_path, CONFIG).read_text()
    run_install(tmp_path, "--pool", POOL, "--api", API, "--workers", "5")
    assert "numprocs=5" in at(tmp_path, CONFIG).read_text()
    backup = Path(f"{at(tmp_path, CONFIG)}.bak")
    assert backup.read_text() == first and "numprocs=2" in first
    assert mode(backup) == 0o640


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --pool and --api"),
        (("--pool", "p"), "--pool and --api go together"),
        (("--pool", "p", "--api", API, "--workers", "0"), "--workers must be"),
        (("--venv", "relative/venv"), "--venv must be an absolute path"),
        (("--venv", "/nonexistent/venv"), "/nonexistent/venv/bin/agent not found"),
        (("--bogus",), "unknown argument"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    # A later --venv wins over the one run_install passes.
    proc = run_install(tmp_path, *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_workers_without_pool_and_api_do_not_touch_an_installed_host(
    installed: Installed, tmp_path: Path
) -> None:
    root = copy_of(installed, tmp_path)
    before = snapshot(root)
    proc = run_install(root, "--workers", "8", check=False)
    assert proc.returncode == 2 and "need --pool and --api" in proc.stderr
    assert snapshot(root) == before


# --- supervisord.conf (repository) vs `agent local install`; log rotation ------------


def test_repo_config_and_generated_config_agree_on_program_settings(
    repo_options: ServerOptions, generated_options: ServerOptions
) -> None:
    repo, generated = programs(repo_options), programs(generated_options)
    for name in ("agent", "agent-worker_00"):
        differ = {
            key: (getattr(repo[name], key), getattr(generated[name], key))
            for key in PROGRAM_SETTINGS
            if getattr(repo[name], key) != getattr(generated[name], key)
        }
        assert not differ, f"{name}: repository vs agent local install: {differ}"
    # The design both must keep: only the poller's group is signalled; workers drain.
    assert (repo["agent"].stopasgroup, repo["agent"].killasgroup) == (True, True)
    worker = repo["agent-worker_00"]
    assert (worker.stopasgroup, worker.killasgroup) == (False, False)
    assert repo["agent"].autostart is False and worker.autostart is False


def test_logrotate_leaves_rotation_to_supervisord(
    repo_options: ServerOptions, generated_options: ServerOptions
) -> None:
    # No rule: a second rotator on supervisord's files would clash with its own.
    text = LOGROTATE_FILE.read_text()
    assert all(not line.strip() or line.startswith("#") for line in text.splitlines())
    # ... which is only right while supervisord rotates every log file itself.
    for options in (repo_options, generated_options):
        section = options.configroot.supervisord
        assert section.logfile_maxbytes > 0 and section.logfile_backups > 0
        for proc in programs(options).values():
            assert proc.redirect_stderr  # no separate stderr log to rotate
            assert proc.stdout_logfile_maxbytes > 0 and proc.stdout_logfile_backups > 0
