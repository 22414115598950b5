"""deploy/local-agent.service: the systemd unit signals only supervisord, leaves flows
alone, outlasts supervisord's whole shutdown, delegates its cgroup (its ExecStart= moves
supervisord to a sub-cgroup on cgroup v2 only) and matches what install.sh creates.

No systemd needed: the unit is parsed as an INI file, and its ExecStart= script runs
against a fake /sys/fs/cgroup.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from tests.unit.deploy_support import (
    CONFIG,
    INSTALL_SH,
    LOG_DIR,
    RUN_DIR,
    SECRETS,
    SHIPPED_VENV,
    SPOOL,
    UNIT_FILE,
    VENV,
    Installed,
    at,
    load_supervisor,
    mode,
    programs,
    read_unit,
)

# The shared fixtures this module's tests need (the redundant alias keeps each bound
# here, where pytest looks for them, without an unused-import warning).
from tests.unit.deploy_support import generated_options as generated_options
from tests.unit.deploy_support import installed as installed
from tests.unit.deploy_support import repo_options as repo_options

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


def worst_shutdown_seconds(options: ServerOptions) -> int:
    """supervisord stops its groups one after the other, the processes of a group
    together, each within its stopwaitsecs (then SIGKILL)."""
    return sum(
        max(p.stopwaitsecs for p in g.process_configs) for g in options.process_group_configs
    )


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
