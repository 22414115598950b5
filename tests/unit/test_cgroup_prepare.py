"""agent/worker/cgroups.py: making the detected containment ready (prepare) — creating
the root, enabling controllers for its children — and degrading with the reason when it
cannot. Runs against fake cgroupfs trees under tmp_path."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from agent.worker.cgroups import NONE_DISABLED, Containment, detect, prepare
from tests.unit.cgroups_support import (
    HYBRID_SELF,
    V2_SELF,
    fake_hybrid,
    fake_v2,
    hybrid_mounts,
    touch,
)

# -- prepare -----------------------------------------------------------------------------


def detect_fake_v2(mount: Path, root: Path | None = None) -> Containment:
    return detect(root, f"cgroup2 {mount} cgroup2 rw,nosuid,nodev,noexec,relatime 0 0", V2_SELF)


def test_prepare_creates_the_v2_root_and_enables_cpu_memory_and_pids_for_its_children(
    tmp_path: Path,
) -> None:
    mount = fake_v2(tmp_path / "cg", "cpuset cpu io memory pids")
    found = detect_fake_v2(mount)
    assert found.v2 is not None
    ready = prepare(found)
    assert found.v2.is_dir()
    assert (found.v2 / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert ready.version == "v2"
    assert ready.enforces == {"memory", "cpu", "pids"}
    assert ready.reason == f"memory, cpu, pids at {found.v2}"
    assert ready.describe() == f"v2: memory, cpu, pids at {found.v2}"
    assert sorted(p.name for p in found.v2.iterdir()) == ["cgroup.subtree_control"]  # no probe


def test_prepare_enables_only_the_controllers_the_tree_offers(tmp_path: Path) -> None:
    mount = fake_v2(tmp_path / "cg", "io memory")
    found = detect_fake_v2(mount)
    assert found.v2 is not None
    prepare(found)
    assert (found.v2 / "cgroup.subtree_control").read_text() == "+memory"


def test_prepare_of_an_existing_root_keeps_it(tmp_path: Path) -> None:
    mount = fake_v2(tmp_path / "cg", "cpu memory pids")
    root = mount / "la"
    touch(root, "kept")
    ready = prepare(detect_fake_v2(mount, root))
    assert ready.version == "v2"
    assert (root / "kept").exists()


def test_a_root_that_cannot_be_created_degrades_to_none_with_the_reason(tmp_path: Path) -> None:
    mount = fake_v2(tmp_path / "cg", "cpu memory pids")
    (mount / "a-file").write_text("")
    root = mount / "a-file" / "la"
    ready = prepare(detect_fake_v2(mount, root))
    assert ready.version == "none"
    assert ready.reason == f"cgroup v2 at {root}: Not a directory"
    assert ready.enforces == frozenset()
    assert not ready.tracks


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_a_root_this_user_cannot_write_says_to_run_as_root_or_delegate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    mount = fake_v2(tmp_path / "cg", "cpu memory pids")
    found = detect_fake_v2(mount)

    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    ready = prepare(found)
    assert ready.version == "none"
    assert ready.reason == (
        f"cgroup v2 at {found.v2}: not writable by this user "
        "(run as root, or delegate it: systemd Delegate=yes)"
    )


def test_a_v2_root_holding_processes_itself_tracks_only_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = fake_v2(tmp_path / "cg", "cpu memory pids")
    found = detect_fake_v2(mount)

    def busy(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(self))

    monkeypatch.setattr(Path, "write_text", busy)
    ready = prepare(found)
    assert ready.version == "v2"
    assert ready.enforces == frozenset()
    assert ready.tracks
    assert ready.reason == (
        f"tracking and kill only (no controllers) at {found.v2} "
        f"(cannot enable cpu, memory, pids at {found.v2}: it holds processes itself; start "
        "supervisord in a 'supervisor' sub-cgroup (deploy/local-agent.service does))"
    )


def test_a_v1_controller_whose_root_cannot_be_made_is_dropped_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    base = fake_hybrid(tmp_path / "cgroup")
    (base / "pids").rmdir()
    (base / "pids").write_text("")  # not a directory: its cgroup cannot be made
    ready = prepare(detect(None, hybrid_mounts(str(base)), HYBRID_SELF))
    assert ready.version == "v1"
    assert ready.enforces == {"memory", "cpu"}
    assert "pids" not in ready.v1
    assert f"(cgroup v1 pids at {base / 'pids' / 'local-agent'}: " in ready.reason
    for controller in ("cpu", "cpuacct", "freezer"):
        assert (base / controller / "local-agent").is_dir()


def test_prepare_never_raises_when_nothing_can_be_made(tmp_path: Path) -> None:
    base = tmp_path / "cgroup"
    base.mkdir()
    for name in ("memory", "unified"):
        (base / name).write_text("")
    mounts = f"cgroup {base}/memory cgroup rw,memory 0 0\n"
    mounts += f"cgroup2 {base}/unified cgroup2 rw 0 0\n"
    ready = prepare(detect(None, mounts, "0::/\n4:memory:/\n"))
    assert ready.version == "none"
    assert ready.reason == (
        f"cgroup v2 at {base / 'unified/local-agent'}: Not a directory; "
        f"cgroup v1 memory at {base / 'memory/local-agent'}: Not a directory"
    )


def test_prepare_leaves_no_containment_as_it_is() -> None:
    assert prepare(NONE_DISABLED) is NONE_DISABLED
    none = Containment("none", "no cgroup filesystem is mounted")
    assert prepare(none) is none
