"""agent/cli/install.py: the configuration `agent local install` prints, read back by supervisor."""

from __future__ import annotations

import configparser
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from supervisor import childutils
from supervisor.datatypes import RestartUnconditionally, RestartWhenExitUnexpected
from supervisor.options import ClientOptions, ServerOptions
from supervisor.process import Subprocess

from agent import __version__
from agent.cli.install import InstallPlan, env_json, render, render_notice

# Every argument and value below must come back exactly: each one breaks a naive writer
# (configparser inline comments, %-expansion, shlex quoting, the env parser's quotes).
HOSTILE_ARGS = (
    "--pool", "my pool", "-l", "it's", "-l", 'say "hi"', "-l", "back\\slash\\",
    "-l", "100%", "-l", "%(ENV_HOME)s", "-l", "a,b=c", "-l", "x ;y", "-l", "x #y",
    "-l", "#start", "-l", ";start", "-l", "", "-l", "ünïcødé ✓ 日本", "-l", "tab\there",
    "-l", "'", "-l", '"', "-l", "--x=1 2", "-l", "$HOME `id` *",
)  # fmt: skip
JSON_ENV = {"SECRET_KEY": 'it\'s "q" 50% ; # \\ \n ünï', "A,B": "x=y, z"}
HOSTILE_ENV = {
    "SPACES": "a b  c",
    "DQ": 'say "hi" now',
    "SQ": "it's",
    "BS": "C:\\dir\\",
    "PCT": "100% %(ENV_HOME)s %% %",
    "COMMA": "a,b,c",
    "EQ": "k=v=w",
    "UNI": "ünïcødé ✓ 日本",
    "HASH": "a#b;c",
    "EMPTY": "",
    "JSON": '{"a": [1, "two"], "b": {"c": null}}',
    "PREFECT__CLOUD__AGENT__ENV_VARS": env_json(JSON_ENV),
}
SECRETS = ("pnu_2kX9s3cr3tK3yValue", "admin:hunter2-pass")


def make_exe(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def make_plan(tmp: Path, **changes: Any) -> InstallPlan:
    run_dir = tmp / "run dir ü,=;x"
    plan = InstallPlan(
        agent_exe=make_exe(tmp / "bin %(x)s dir" / "agent"),
        poller_args=HOSTILE_ARGS,
        worker_args=("--spool", str(tmp / "spool 100%"), "-l", "x ;y"),
        poller_env=HOSTILE_ENV,
        workers=3,
        run_dir=run_dir,
        worker_stop_wait=123,
    )
    plan = replace(plan, **changes)
    if plan.run_dir.is_absolute():
        plan.run_dir.mkdir(parents=True, exist_ok=True)  # supervisor checks log dirs exist
    return plan


def load(text: str, tmp: Path, include: bool = False) -> ServerOptions:
    """Parse ``text`` the way supervisord does at startup."""
    conf = tmp / "supervisord.conf"
    if include:
        # A minimal host configuration pulling the file in, as Debian's does for conf.d/.
        (tmp / "local-agent.conf").write_text(text, encoding="utf-8")
        conf.write_text("[supervisord]\n\n[include]\nfiles = local-agent.conf\n")
    else:
        conf.write_text(text, encoding="utf-8")
    options = ServerOptions()
    options.configfile = str(conf)
    options.process_config(do_usage=False)
    return options


def one_line(text: str) -> str:
    """The comments' words in one line: the secrets note is wrapped."""
    return " ".join(text.replace("\n;", " ").split())


def processes(options: ServerOptions) -> dict[str, Any]:
    return {p.name: p for g in options.process_group_configs for p in g.process_configs}


def execv_args(pconfig: Any) -> tuple[str, list[str]]:
    """What supervisord would exec: its own split of ``command=`` (and the file check)."""
    filename, args = Subprocess(pconfig).get_execv_args()
    return filename, args


def test_full_config_gives_back_the_exact_argv_and_environment(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    procs = processes(load(render(plan), tmp_path))

    assert sorted(procs) == ["agent", "agent-worker_00", "agent-worker_01", "agent-worker_02"]
    assert execv_args(procs["agent"]) == (
        plan.agent_exe,
        [plan.agent_exe, "local", "start", *HOSTILE_ARGS],
    )
    metrics = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "run dir ü,=;x" / "metrics")}
    assert procs["agent"].environment == {**metrics, **HOSTILE_ENV}
    assert json.loads(procs["agent"].environment["PREFECT__CLOUD__AGENT__ENV_VARS"]) == JSON_ENV
    for n in range(3):
        worker = procs[f"agent-worker_{n:02d}"]
        assert execv_args(worker) == (plan.agent_exe, [plan.agent_exe, "worker", *plan.worker_args])
        # Workers get the metrics dir only, not the poller's --env values.
        assert worker.environment == metrics


def test_program_settings_are_the_repository_design(tmp_path: Path) -> None:
    procs = processes(load(render(make_plan(tmp_path)), tmp_path))
    poller, workers = procs["agent"], [procs[f"agent-worker_{n:02d}"] for n in range(3)]
    run = tmp_path / "run dir ü,=;x"

    for p in (poller, *workers):
        assert p.autostart is False  # started by `start agent` / the poller, never at boot
        assert p.exitcodes == [0, 78]
        assert p.startsecs == 3
        assert p.startretries == 3
        assert p.redirect_stderr is True
        assert p.uid is None
    assert poller.autorestart is RestartWhenExitUnexpected
    assert (poller.stopasgroup, poller.killasgroup, poller.stopwaitsecs) == (True, True, 10)
    assert poller.stdout_logfile == str(run / "agent.log")
    for n, w in enumerate(workers):
        assert w.autorestart is RestartUnconditionally
        assert (w.stopasgroup, w.killasgroup, w.stopwaitsecs) == (False, False, 123)
        assert w.stdout_logfile == str(run / f"agent-worker_{n:02d}.log")


def test_full_config_has_the_socket_rpc_and_supervisorctl(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    text = render(plan)
    options = load(text, tmp_path)
    section = options.configroot.supervisord
    run = str(plan.run_dir)

    (server,) = section.server_configs
    assert (server["family"], server["file"], server["chmod"]) == (
        socket.AF_UNIX,
        run + "/supervisor.sock",
        0o700,
    )
    assert server["chown"] == (-1, -1)  # no user: supervisord's own user owns it
    assert [name for name, _, _ in section.rpcinterface_factories] == ["supervisor"]
    assert (section.logfile, section.pidfile, section.childlogdir) == (
        run + "/supervisord.log",
        run + "/supervisord.pid",
        run,
    )
    client = ClientOptions()
    client.realize(args=["-c", str(tmp_path / "supervisord.conf")])
    assert client.serverurl == "unix://" + run + "/supervisor.sock"


def test_user_runs_both_programs_and_owns_the_socket(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.getuid())
    options = load(render(make_plan(tmp_path, user=me.pw_name)), tmp_path)

    assert {p.uid for p in processes(options).values()} == {me.pw_uid}
    # The poller runs as `user` and must open the socket to start the workers.
    (server,) = options.configroot.supervisord.server_configs
    assert server["chown"] == (me.pw_uid, -1)  # -1: group unchanged


def test_include_only_is_two_programs_that_load_through_an_include(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, include_only=True, workers=2)
    text = render(plan)
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"))
    parser.read_string(text)

    assert parser.sections() == ["program:agent", "program:agent-worker"]
    assert "RPC interface" in text and "Debian" in text
    procs = processes(load(text, tmp_path, include=True))
    assert sorted(procs) == ["agent", "agent-worker_00", "agent-worker_01"]
    assert execv_args(procs["agent"])[1] == [plan.agent_exe, "local", "start", *HOSTILE_ARGS]
    # No [supervisord] section of ours: the metrics dir must come with each program.
    assert procs["agent-worker_01"].environment == {
        "PROMETHEUS_MULTIPROC_DIR": str(plan.run_dir / "metrics")
    }
    assert procs["agent"].environment["PCT"] == HOSTILE_ENV["PCT"]


def test_header_says_what_it_is_and_how_to_start_and_stop(tmp_path: Path) -> None:
    text = render(make_plan(tmp_path, poller_env={}))
    header = text[: text.index("[unix_http_server]")]

    assert all(line.startswith(";") or not line for line in header.splitlines())
    assert f"local-agent {__version__}" in header
    assert "`agent local install`" in header
    assert "supervisord -c FILE" in header
    assert "supervisorctl -c FILE start agent" in header
    assert "supervisorctl -c FILE stop agent agent-worker:*" in header
    assert "123 s" in header
    assert "SECRETS" not in header and "mode 600" not in header
    # The repository's per-setting reasons are kept.
    assert "an operator" in text and "78: bad configuration" in text
    assert "never kills a running flow" in text
    # Why the systemd unit needs Delegate=yes: the runs' cgroups are the agent's.
    assert "Delegate=yes" in one_line(header) and "cgroup below the agent's own" in one_line(header)


def test_omitted_secrets_are_named_with_where_to_put_them(tmp_path: Path) -> None:
    omitted = ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")
    plan = make_plan(tmp_path, omitted=omitted)
    text = one_line(render(plan))
    notice = render_notice(plan)

    assert notice is not None and "\n" not in notice.strip()
    for out in (text, notice):
        assert "PREFECT_API_KEY" in out and "PREFECT_API_AUTH_STRING" in out
        assert "/etc/local-agent/agent.toml" in out
        assert 'key = "..."' in out and 'auth-string = "..."' in out
        assert "chmod 600" in out and "EnvironmentFile=" in out
    assert "SECRETS NOT WRITTEN HERE" in text and "Never in this file" in text

    own = make_plan(tmp_path, omitted=("PREFECT_API_KEY",), config_file=Path("/srv/a.toml"))
    for out in (one_line(render(own)), render_notice(own) or ""):
        assert "/srv/a.toml" in out and "/etc/local-agent" not in out
    assert render_notice(make_plan(tmp_path)) is None


def test_no_secret_value_appears_anywhere(tmp_path: Path) -> None:
    # As the command builds it: the secrets were given to `install` but stay out of the plan.
    env = {"SECRET_KEY": "plain", "OTHER": "x"}
    plan = make_plan(
        tmp_path,
        poller_args=("--pool", "p", "--api", "http://127.0.0.1:4200/api"),
        poller_env={"PREFECT__CLOUD__AGENT__ENV_VARS": env_json(env)},
        omitted=("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"),
        user=pwd.getpwuid(os.getuid()).pw_name,
    )
    outputs = [render(plan), render(replace(plan, include_only=True)), render_notice(plan) or ""]
    for out in outputs:
        for secret in SECRETS:
            assert secret not in out
            assert secret.split(":")[-1] not in out
    assert "PREFECT_API_KEY" in outputs[0]


@pytest.mark.parametrize(
    "value",
    ["a ;b", "a #b", '"quoted"', "'quoted'", 'it\'s "both"', "two\nlines", "nul\x00"],
)
def test_env_values_supervisord_cannot_read_back_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValueError, match="SECRET_KEY") as info:
        render(make_plan(tmp_path, poller_env={"SECRET_KEY": value}))
    assert value not in str(info.value)  # the message names the key, never the value


@pytest.mark.parametrize(
    "changes",
    [
        {"agent_exe": "agent"},
        {"run_dir": Path("relative/run")},
        {"run_dir": Path("/tmp/x ;y")},
        {"run_dir": Path("/tmp/50%")},
        {"run_dir": Path("/tmp/trailing ")},
        {"run_dir": Path("/tmp/" + "x" * 120)},
        {"workers": 0},
        {"worker_stop_wait": 0},
        {"user": "bad user"},
        {"poller_args": ("-l", "two\nlines")},
        {"worker_args": ("\r",)},
        {"poller_env": {"BAD-NAME": "x"}},
        {"poller_env": {"PROMETHEUS_MULTIPROC_DIR": "/elsewhere"}},
    ],
)
def test_plans_that_cannot_be_written_are_refused(tmp_path: Path, changes: Any) -> None:
    with pytest.raises(ValueError):
        render(make_plan(tmp_path, **changes))


def test_env_json_is_always_writable_and_decodes_to_the_same(tmp_path: Path) -> None:
    nasty = {"K'#;": "' \" ; # \\ % \n \u2028 ,= ünï 'end'", "": " ;"}
    plan = make_plan(tmp_path, poller_env={"VARS": env_json(nasty)})
    procs = processes(load(render(plan), tmp_path))
    assert json.loads(procs["agent"].environment["VARS"]) == nasty


FAKE_AGENT = """#!{python}
# Records what supervisord started it with; as the poller, starts the workers over RPC.
import json, os, sys, time
from pathlib import Path
name = os.environ["SUPERVISOR_PROCESS_NAME"]
out = Path(__file__).with_name(name + ".json")
out.with_suffix(".tmp").write_text(json.dumps({{"argv": sys.argv, "env": dict(os.environ)}}))
os.replace(out.with_suffix(".tmp"), out)
if sys.argv[1:3] == ["local", "start"]:
    from supervisor import childutils
    childutils.getRPCInterface(os.environ).supervisor.startProcessGroup("agent-worker", False)
parent = os.getppid()
while os.getppid() == parent:  # never outlive supervisord
    time.sleep(0.2)
"""


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # A unix socket path is limited to 107 bytes: pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="ai ", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "supervisord exited"
        assert time.monotonic() < deadline, f"timed out waiting for {path.name}"
        time.sleep(0.05)


def test_supervisord_runs_it_and_the_poller_starts_the_workers(short_tmp: Path) -> None:
    bin_dir = short_tmp / "b %in"
    exe = make_exe(bin_dir / "agent", FAKE_AGENT.format(python=sys.executable))
    env = {"QUOTES": "it's", "PCT": "5%", "VARS": env_json(JSON_ENV)}
    plan = replace(
        make_plan(short_tmp, poller_env=env, workers=2),
        agent_exe=exe,
        run_dir=short_tmp / "r;5 ü",
    )
    plan.run_dir.mkdir()
    conf = short_tmp / "supervisord.conf"
    conf.write_text(render(plan), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        sock = plan.run_dir / "supervisor.sock"
        wait_for(sock, proc)
        rpc: Any = childutils.getRPCInterface({"SUPERVISOR_SERVER_URL": f"unix://{sock}"})
        rpc.supervisor.startProcess("agent", False)  # what `supervisorctl start agent` does
        for name in ("agent", "agent-worker_00", "agent-worker_01"):
            wait_for(bin_dir / f"{name}.json", proc)
        poller = json.loads((bin_dir / "agent.json").read_text())
        assert poller["argv"][1:] == ["local", "start", *HOSTILE_ARGS]
        assert {k: poller["env"][k] for k in env} == env
        assert poller["env"]["PROMETHEUS_MULTIPROC_DIR"] == str(plan.run_dir / "metrics")
        assert poller["env"]["SUPERVISOR_SERVER_URL"] == f"unix://{sock}"
        worker = json.loads((bin_dir / "agent-worker_01.json").read_text())
        assert worker["argv"][1:] == ["worker", *plan.worker_args]
        assert "QUOTES" not in worker["env"]
        rpc.supervisor.shutdown()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
