"""deploy/install.sh: valid bash that lays out the host with private modes, lets no
secret or caller setting reach a file, writes `agent local install`'s configuration with
the logs moved, changes nothing on a second run and refuses bad input before it changes
anything.

It runs for real with ``--root`` into a temporary directory (no user is created, nothing
outside it changes).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.deploy_support import (
    API,
    CONFIG,
    INSTALL_SH,
    LOG_DIR,
    LOGROTATE_FILE,
    POOL,
    RUN_DIR,
    SECRET_AUTH,
    SECRET_KEY,
    SECRETS,
    SPOOL,
    VENV,
    Installed,
    at,
    load_supervisor,
    mode,
    programs,
    run_install,
)

# The shared fixtures this module's tests need (the redundant alias keeps each bound
# here, where pytest looks for them, without an unused-import warning).
from tests.unit.deploy_support import installed as installed


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under ``root``: mode, mtime and content (files)."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() else b""
        found[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, content)
    return found


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
