"""Tidying what finished runs leave in the spool (agent/spool/moves.py decides what goes):
dropping a retired spec's --env values, and deleting old entries without following
symlinks."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from agent.spool.files import replace_file_durably

log = logging.getLogger(__name__)


def forget_env_values(path: Path) -> None:
    """A finished spec keeps no --env values (they may be secrets): rewrite it without
    them. Best effort: the run is already retired, and a spec that is not a JSON object
    (a refused one) is left as it is."""
    try:
        body = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return
    if not isinstance(body, dict) or not body.get("env_vars"):
        return
    body["env_vars"] = {}
    try:
        replace_file_durably(path, json.dumps(body, indent=1, sort_keys=True).encode())
    except OSError as exc:
        log.warning("cannot drop the env values of finished spec %s: %s", path.name, exc)


def entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def newest_mtime(path: Path) -> float:
    """The newest mtime of ``path`` and, for a folder, of what is inside (two levels:
    runs/<id>/<claim>/<file>); a vanished entry counts as new, so it is left alone."""
    try:
        newest = path.lstat().st_mtime
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                newest = max(newest, child.lstat().st_mtime)
                if child.is_dir() and not child.is_symlink():
                    newest = max([newest, *(g.lstat().st_mtime for g in child.iterdir())])
    except OSError:
        return float("inf")
    return newest


def remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("retention: cannot delete %s: %s", path, exc)
        return False
    return True
