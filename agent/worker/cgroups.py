"""What containment this host gives: cgroup v2, v1, or none, and where runs' cgroups go.

Read once at start from /proc/self/mounts and /proc/self/cgroup (`detect`), then made
ready by the worker (`prepare`: the root is created and, on v2, the controllers enabled
for its children). The poller, `agent status` and the health endpoint only `detect`.

- v2 with the memory, cpu and pids controllers: limits, tracking and kill in one tree.
- v1 (memory, cpu, pids; freezer for kill; cpuacct for CPU time): limits there. A cgroup
  v2 tree mounted beside it without controllers (systemd's hybrid layout) still tracks
  and kills the whole run (``cgroup.kill``).
- none: ``--cgroup-root`` is not in a cgroup filesystem, or it cannot be written (not
  root and not delegated). Runs still run; a run that asks for a limit is Failed with
  the reason, or runs unbounded with ``--containment best-effort``.

``--cgroup-root`` names a directory in any cgroup hierarchy; its path below that
hierarchy's mount is used in every other hierarchy too. By default it is the agent's own
cgroup (its parent when the agent runs in a ``supervisor`` leaf, as deploy/ sets up on
v2) plus ``local-agent``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

LIMITS = ("memory", "cpu", "pids")
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
DEFAULT_LEAF = "local-agent"
SUPERVISOR_LEAF = "supervisor"  # where deploy/local-agent.service puts the agent on v2


@dataclass(frozen=True)
class Mount:
    path: Path
    fstype: str  # "cgroup" (v1) or "cgroup2"
    controllers: frozenset[str] = frozenset()  # v1 only


@dataclass(frozen=True)
class Containment:
    """Where runs' cgroups go and what they can enforce."""

    version: str  # "v2", "v1" or "none"
    reason: str  # what the agent says about it, once, at start
    v2: Path | None = None  # the root in the v2 tree: tracking and kill (and limits)
    v2_limits: frozenset[str] = frozenset()  # controllers the v2 root gives its children
    v1: Mapping[str, Path] = field(default_factory=dict)  # controller -> root in v1

    @property
    def enforces(self) -> frozenset[str]:
        """Which of memory, cpu and pids a run's limit can be set for."""
        return frozenset(c for c in LIMITS if c in self.v2_limits or c in self.v1)

    @property
    def tracks(self) -> bool:
        """Whether a run's processes are found (and killed) by their cgroup."""
        return self.v2 is not None or bool(self.v1)

    def describe(self) -> str:
        return f"{self.version}: {self.reason}"

    def cannot(self, kind: str) -> str:
        """Why a run's ``kind`` limit cannot be enforced here."""
        if self.version == "none":
            return f"this host has no cgroup containment ({self.reason})"
        return f"this host's cgroups have no {kind} controller ({self.describe()})"


NONE_DISABLED = Containment("none", "turned off (--containment off)")


def parse_mounts(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[2] not in ("cgroup", "cgroup2"):
            continue
        path = Path(parts[1].replace("\\040", " "))
        options = frozenset(parts[3].split(","))
        controllers = options & frozenset(V1_CONTROLLERS) if parts[2] == "cgroup" else frozenset()
        mounts.append(Mount(path, parts[2], controllers))
    return mounts


def parse_self_cgroup(text: str) -> tuple[str | None, dict[str, str]]:
    """(the v2 path, {v1 controller: path}) from /proc/self/cgroup."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        for controller in parts[1].split(","):
            if controller in V1_CONTROLLERS:
                v1[controller] = parts[2]
    return v2, v1


def _below(mount: Path, rel: str) -> Path:
    return mount / rel.lstrip("/") if rel.strip("/") else mount


def _default_rel(own: str | None) -> str:
    own = own or "/"
    path = Path(own)
    if path.name == SUPERVISOR_LEAF:
        path = path.parent
    return str(path / DEFAULT_LEAF)


def detect(
    root: Path | None,
    mounts_text: str | None = None,
    self_cgroup_text: str | None = None,
) -> Containment:
    """Where runs' cgroups would go, without creating anything."""
    mounts = parse_mounts(_read(Path("/proc/self/mounts")) if mounts_text is None else mounts_text)
    own_v2, own_v1 = parse_self_cgroup(
        _read(Path("/proc/self/cgroup")) if self_cgroup_text is None else self_cgroup_text
    )
    v2_mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    v1_mounts = {c: m for m in mounts if m.fstype == "cgroup" for c in m.controllers}
    if root is not None:
        root = Path(os.path.abspath(root))  # "x" or ".." would not map into other trees
        holder = _holder(root, mounts)
        if holder is None:
            return Containment("none", f"--cgroup-root {root} is not in a cgroup filesystem")
        rel = "/" + str(root.relative_to(holder.path)) if root != holder.path else "/"
        v2 = _below(v2_mount.path, rel) if v2_mount else None
        v1 = {c: _below(m.path, rel) for c, m in v1_mounts.items()}
    else:
        v2 = _below(v2_mount.path, _default_rel(own_v2)) if v2_mount else None
        v1 = {c: _below(m.path, _default_rel(own_v1.get(c))) for c, m in v1_mounts.items()}
    if v2 is None and not v1:
        return Containment("none", "no cgroup filesystem is mounted")
    v2_limits = _offered(v2) & frozenset(LIMITS) if v2 is not None else frozenset()
    # A controller v2 offers wins over the same one in v1 (a kernel lets one tree have it).
    v1 = {c: p for c, p in v1.items() if c not in v2_limits}
    return _summarise(v2, v2_limits, v1)


def _summarise(v2: Path | None, v2_limits: frozenset[str], v1: Mapping[str, Path]) -> Containment:
    limits_v1 = [c for c in LIMITS if c in v1]
    if v2_limits:
        names = ", ".join(c for c in LIMITS if c in v2_limits)
        return Containment("v2", f"{names} at {v2}", v2, v2_limits, v1)
    if limits_v1:
        where = next(iter(v1.values()))
        reason = f"{', '.join(limits_v1)} in cgroup v1 (e.g. {where})"
        if v2 is not None:
            reason += f"; processes tracked and killed through cgroup v2 at {v2}"
        return Containment("v1", reason, v2, frozenset(), v1)
    if v2 is not None:
        return Containment("v2", f"tracking and kill only (no controllers) at {v2}", v2)
    return Containment("v1", "tracking only", None, frozenset(), v1)


def _holder(root: Path, mounts: list[Mount]) -> Mount | None:
    """The cgroup mount ``root`` lies in (the deepest mount point above it), if any."""
    resolved = Path(os.path.abspath(root))
    best: Mount | None = None
    for mount in mounts:
        inside = resolved == mount.path or mount.path in resolved.parents
        if inside and (best is None or len(mount.path.parts) > len(best.path.parts)):
            best = mount
    return best


def _offered(v2_root: Path) -> frozenset[str]:
    """Controllers the v2 root's children could get: those of its nearest existing
    ancestor's ``cgroup.controllers`` (the root may not exist yet)."""
    for directory in (v2_root, *v2_root.parents):
        text = _read(directory / "cgroup.controllers")
        if text or (directory / "cgroup.controllers").exists():
            return frozenset(text.split())
    return frozenset()


def prepare(found: Containment) -> Containment:
    """Create the roots and, on v2, enable the limit controllers for their children.
    What cannot be done degrades ``found`` and says why, never raises."""
    if found.version == "none":
        return found
    v2, v2_limits, v1 = found.v2, found.v2_limits, dict(found.v1)
    notes = []
    if v2 is not None:
        problem = _make(v2)
        if problem:
            notes.append(f"cgroup v2 at {v2}: {problem}")
            v2, v2_limits = None, frozenset()
        elif v2_limits:
            problem = _enable(v2, v2_limits)
            if problem:
                notes.append(f"cannot enable {', '.join(sorted(v2_limits))} at {v2}: {problem}")
                v2_limits = frozenset()
    for controller, path in list(v1.items()):
        problem = _make(path)
        if problem:
            notes.append(f"cgroup v1 {controller} at {path}: {problem}")
            del v1[controller]
    if v2 is None and not v1:
        return Containment("none", "; ".join(notes) or "no usable cgroup")
    ready = _summarise(v2, v2_limits, v1)
    if notes:
        ready = Containment(
            ready.version, f"{ready.reason} ({'; '.join(notes)})", ready.v2, ready.v2_limits, v1
        )
    return ready


def _make(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Another user's cgroup, or a read-only cgroupfs: mkdir of the run's would fail.
        probe = path / f".probe-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return _why(exc)
    return None


def _enable(v2: Path, controllers: frozenset[str]) -> str | None:
    """Write ``+memory +cpu +pids`` to the root's subtree_control. EBUSY: the root holds
    processes itself (v2's "no internal processes" rule)."""
    try:
        (v2 / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(controllers)))
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return (
                "it holds processes itself; start supervisord in a 'supervisor' sub-cgroup "
                "(deploy/local-agent.service does)"
            )
        return _why(exc)
    return None


def _why(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "not writable by this user (run as root, or delegate it: systemd Delegate=yes)"
    return exc.strerror or str(exc)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def holds_run(roots: list[Path], run_id: str) -> bool:
    """Whether a process of this flow run (any claim) is in its cgroup under ``roots``:
    what reconcile asks before it calls a run without a spec stranded."""
    for root in roots:
        for directory in root.glob(f"run-{run_id}-*"):
            if _read(directory / "cgroup.procs").split():
                return True
    return False
