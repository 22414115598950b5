"""Shared by the deploy/ tests (test_systemd_unit, test_install_sh,
test_supervisord_conf): where deploy/'s files are and where install.sh puts things on the
host, the unit read as an INI file, install.sh run with ``--root`` into a temporary
directory (no user is created, nothing outside it changes), supervisord's reading of a
configuration, and the fixtures: one install per module, the repository's
supervisord.conf and the configuration install.sh wrote, as supervisord reads them.
"""

from __future__ import annotations

import configparser
import os
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
