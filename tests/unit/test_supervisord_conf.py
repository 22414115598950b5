"""The repository's supervisord.conf and the one `agent local install` writes (through
install.sh) agree on how the agent starts, restarts and stops, and deploy/logrotate.conf
leaves the rotation of their logs to supervisord."""

from __future__ import annotations

from supervisor.options import ServerOptions

from tests.unit.deploy_support import LOGROTATE_FILE, programs

# The shared fixtures this module's tests need (the redundant alias keeps each bound
# here, where pytest looks for them, without an unused-import warning).
from tests.unit.deploy_support import generated_options as generated_options
from tests.unit.deploy_support import installed as installed  # generated_options uses it
from tests.unit.deploy_support import repo_options as repo_options

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
