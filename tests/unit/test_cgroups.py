"""agent/worker/cgroups.py and agent/worker/runcgroup.py: what containment a host gives,
making it ready, and one run's cgroup (limits, usage, kill, removal).

Most tests run against directories laid out like a cgroupfs under tmp_path: this host's
real v2 tree offers no controllers, and a fake one lets the limit files be read back. A
fake cgroupfs does not create a cgroup's control files on mkdir, so the tests create the
ones the code writes. One test uses the real cgroup2 mount when run as root.
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.core.limits import MIB, Limits
from agent.worker import cgroups
from agent.worker.cgroups import NONE_DISABLED, Containment, Mount, detect, prepare
from agent.worker.runcgroup import RunCgroup, Usage

# -- what /proc/self/mounts and /proc/self/cgroup say on three kinds of host -------------

V2_MOUNTS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/sda1 / ext4 rw,relatime,errors=remount-ro 0 0
securityfs /sys/kernel/security securityfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev,size=1632072k,mode=755 0 0
"""
V2_SELF = "0::/system.slice/local-agent.service/supervisor\n"

V1_CONTROLLER_DIRS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")


def hybrid_mounts(base: str = "/sys/fs/cgroup") -> str:
    """Like this machine: every v1 controller mounted on its own, and systemd's
    controller-less v2 tree at unified/."""
    lines = [
        "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0",
        f"tmpfs {base} tmpfs rw,relatime,mode=755 0 0",
        *(f"cgroup {base}/{c} cgroup rw,relatime,{c} 0 0" for c in V1_CONTROLLER_DIRS),
        f"cgroup {base}/systemd cgroup rw,relatime,name=systemd 0 0",
        f"cgroup2 {base}/unified cgroup2 rw,relatime 0 0",
    ]
    return "\n".join(lines) + "\n"


HYBRID_SELF = """\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/3073ffa37b8de017f018386109ae302d
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""

NO_CGROUP_MOUNTS = """\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
"""

ALL_V2 = "cpuset cpu io memory hugetlb pids rdma misc\n"


def fake_v2(directory: Path, controllers: str = ALL_V2) -> Path:
    """A directory laid out like the top of a cgroup2 tree."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cgroup.controllers").write_text(controllers)
    (directory / "cgroup.subtree_control").write_text("")
    return directory


def fake_hybrid(base: Path, v2_controllers: str = "") -> Path:
    for controller in (*V1_CONTROLLER_DIRS, "systemd"):
        (base / controller).mkdir(parents=True)
    fake_v2(base / "unified", v2_controllers)
    return base


def touch(directory: Path, *names: str, text: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text(text)


# -- parsing ---------------------------------------------------------------------------


def test_a_pure_v2_host_has_one_cgroup2_mount_and_a_v2_path_only() -> None:
    assert cgroups.parse_mounts(V2_MOUNTS) == [Mount(Path("/sys/fs/cgroup"), "cgroup2")]
    assert cgroups.parse_self_cgroup(V2_SELF) == (
        "/system.slice/local-agent.service/supervisor",
        {},
    )


def test_a_hybrid_host_has_each_v1_controller_at_its_own_mount_and_the_v2_tree_beside() -> None:
    mounts = cgroups.parse_mounts(hybrid_mounts())
    by_path = {str(m.path): m for m in mounts}
    assert by_path["/sys/fs/cgroup/memory"] == Mount(
        Path("/sys/fs/cgroup/memory"), "cgroup", frozenset({"memory"})
    )
    assert by_path["/sys/fs/cgroup/unified"] == Mount(Path("/sys/fs/cgroup/unified"), "cgroup2")
    # Controllers the agent does not use, and systemd's named hierarchy, carry none.
    for other in ("cpuset", "devices", "blkio", "systemd"):
        assert by_path[f"/sys/fs/cgroup/{other}"].controllers == frozenset()
    assert "/sys/fs/cgroup" not in by_path  # the tmpfs holding the mount points
    v2, v1 = cgroups.parse_self_cgroup(HYBRID_SELF)
    assert v2 == "/"
    assert v1 == {
        "pids": "/",
        "freezer": "/",
        "memory": "/process_api/3073ffa37b8de017f018386109ae302d",
        "cpuacct": "/",
        "cpu": "/",
    }


def test_co_mounted_v1_controllers_share_one_mount_and_one_line() -> None:
    mounts = cgroups.parse_mounts(
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0\n"
    )
    assert mounts == [
        Mount(Path("/sys/fs/cgroup/cpu,cpuacct"), "cgroup", frozenset({"cpu", "cpuacct"}))
    ]
    _, v1 = cgroups.parse_self_cgroup("4:cpu,cpuacct:/user.slice\n")
    assert v1 == {"cpu": "/user.slice", "cpuacct": "/user.slice"}


def test_a_mount_point_with_a_space_is_unescaped() -> None:
    mounts = cgroups.parse_mounts("cgroup2 /mnt/my\\040cgroups cgroup2 rw 0 0\n")
    assert mounts == [Mount(Path("/mnt/my cgroups"), "cgroup2")]


def test_a_host_without_cgroups_parses_to_nothing() -> None:
    assert cgroups.parse_mounts(NO_CGROUP_MOUNTS) == []
    assert cgroups.parse_self_cgroup("") == (None, {})


def test_malformed_lines_are_skipped() -> None:
    assert cgroups.parse_mounts("cgroup2\n\ncgroup2 /x\n") == []
    assert cgroups.parse_self_cgroup("garbage\n4:memory\n0::/a\n") == ("/a", {})


# -- detect ------------------------------------------------------------------------------


def test_no_cgroup_filesystem_means_no_containment() -> None:
    found = detect(None, NO_CGROUP_MOUNTS, "")
    assert found.version == "none"
    assert found.reason == "no cgroup filesystem is mounted"
    assert found.enforces == frozenset()
    assert not found.tracks
    assert found.cannot("memory") == (
        "this host has no cgroup containment (no cgroup filesystem is mounted)"
    )


def test_v2_default_root_is_beside_the_supervisor_leaf(tmp_path: Path) -> None:
    mount = fake_v2(tmp_path / "cg", "cpuset cpu io memory pids")
    found = detect(None, f"cgroup2 {mount} cgroup2 rw,nosuid,nodev,noexec,relatime 0 0", V2_SELF)
    root = mount / "system.slice" / "local-agent.service" / "local-agent"
    assert found.version == "v2"
    assert found.v2 == root
    assert found.v2_limits == {"memory", "cpu", "pids"}
    assert found.v1 == {}
    assert found.enforces == {"memory", "cpu", "pids"}
    assert found.reason == f"memory, cpu, pids at {root}"
    assert not root.exists()  # detect creates nothing


def test_v2_default_root_outside_a_supervisor_leaf_is_below_the_agents_own_cgroup(
    tmp_path: Path,
) -> None:
    mount = fake_v2(tmp_path / "cg")
    found = detect(None, f"cgroup2 {mount} cgroup2 rw 0 0", "0::/user.slice/session-3.scope\n")
    assert found.v2 == mount / "user.slice" / "session-3.scope" / "local-agent"


def test_v2_offering_only_some_controllers_enforces_only_those(tmp_path: Path) -> None:
    mount = fake_v2(tmp_path / "cg", "cpuset io memory")
    found = detect(None, f"cgroup2 {mount} cgroup2 rw 0 0", V2_SELF)
    assert found.version == "v2"
    assert found.enforces == {"memory"}
    assert found.cannot("cpu").startswith("this host's cgroups have no cpu controller (v2: ")


def test_v2_without_controllers_tracks_and_kills_only(tmp_path: Path) -> None:
    mount = fake_v2(tmp_path / "cg", "")
    found = detect(None, f"cgroup2 {mount} cgroup2 rw 0 0", "0::/\n")
    assert found.version == "v2"
    assert found.v2 == mount / "local-agent"
    assert found.enforces == frozenset()
    assert found.tracks
    assert found.reason == f"tracking and kill only (no controllers) at {mount / 'local-agent'}"


def test_hybrid_default_root_is_each_v1_controllers_own_cgroup_plus_local_agent(
    tmp_path: Path,
) -> None:
    base = fake_hybrid(tmp_path / "cgroup")
    found = detect(None, hybrid_mounts(str(base)), HYBRID_SELF)
    assert found.version == "v1"
    assert found.v2 == base / "unified" / "local-agent"
    assert found.v1 == {
        "cpu": base / "cpu" / "local-agent",
        "cpuacct": base / "cpuacct" / "local-agent",
        "memory": base / "memory" / "process_api/3073ffa37b8de017f018386109ae302d/local-agent",
        "freezer": base / "freezer" / "local-agent",
        "pids": base / "pids" / "local-agent",
    }
    assert found.v2_limits == frozenset()
    assert found.enforces == {"memory", "cpu", "pids"}
    assert found.reason.startswith("memory, cpu, pids in cgroup v1 (e.g. ")
    assert found.reason.endswith(
        f"; processes tracked and killed through cgroup v2 at {base / 'unified/local-agent'}"
    )


def test_a_controller_the_v2_tree_offers_is_taken_from_v2_not_v1(tmp_path: Path) -> None:
    base = fake_hybrid(tmp_path / "cgroup", v2_controllers="memory\n")
    found = detect(None, hybrid_mounts(str(base)), HYBRID_SELF)
    assert found.version == "v2"
    assert found.v2_limits == {"memory"}
    assert "memory" not in found.v1
    assert set(found.v1) == {"cpu", "cpuacct", "pids", "freezer"}
    assert found.enforces == {"memory", "cpu", "pids"}


def test_an_explicit_root_outside_any_cgroup_filesystem_gives_no_containment() -> None:
    root = Path("/var/lib/local-agent/cgroups")
    found = detect(root, V2_MOUNTS, V2_SELF)
    assert found == Containment("none", f"--cgroup-root {root} is not in a cgroup filesystem")


def test_an_explicit_root_on_the_tmpfs_that_holds_the_v1_mounts_is_not_a_cgroup() -> None:
    root = Path("/sys/fs/cgroup/local-agent")
    found = detect(root, hybrid_mounts(), HYBRID_SELF)
    assert found.version == "none"
    assert found.reason == "--cgroup-root /sys/fs/cgroup/local-agent is not in a cgroup filesystem"


def test_an_explicit_root_under_a_v1_mount_is_the_same_path_in_every_hierarchy(
    tmp_path: Path,
) -> None:
    base = fake_hybrid(tmp_path / "cgroup")
    found = detect(base / "memory" / "agents" / "la", hybrid_mounts(str(base)), HYBRID_SELF)
    assert found.v2 == base / "unified" / "agents" / "la"
    assert found.v1 == {c: base / c / "agents" / "la" for c in cgroups.V1_CONTROLLERS}


def test_an_explicit_root_at_a_mount_point_is_that_mount_in_every_hierarchy(
    tmp_path: Path,
) -> None:
    base = fake_hybrid(tmp_path / "cgroup")
    found = detect(base / "pids", hybrid_mounts(str(base)), HYBRID_SELF)
    assert found.v2 == base / "unified"
    assert found.v1 == {c: base / c for c in cgroups.V1_CONTROLLERS}


def test_an_explicit_root_in_the_v2_tree_is_used_there(tmp_path: Path) -> None:
    mount = fake_v2(tmp_path / "cg", "cpu memory pids")
    found = detect(mount / "agents" / "la", f"cgroup2 {mount} cgroup2 rw 0 0", V2_SELF)
    assert found.version == "v2"
    assert found.v2 == mount / "agents" / "la"
    assert found.enforces == {"memory", "cpu", "pids"}


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


# -- one run's cgroup ----------------------------------------------------------------------

RUN_ID = "5f0c9a62-1b0e-4c55-9e7a-0d2b8f3c1e44"
CLAIM = "c1a2b3c4d5e6f7a8"
RUN_NAME = f"run-{RUN_ID}-c1a2b3c4"
V2_RUN_FILES = (
    "cgroup.procs",
    "cgroup.events",
    "cgroup.kill",
    "memory.max",
    "memory.swap.max",
    "cpu.max",
    "pids.max",
)
V1_RUN_FILES = {
    "memory": ("cgroup.procs", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
    "cpu": ("cgroup.procs", "cpu.cfs_period_us", "cpu.cfs_quota_us"),
    "cpuacct": ("cgroup.procs",),
    "pids": ("cgroup.procs", "pids.max"),
    "freezer": ("cgroup.procs", "freezer.state"),
}


@pytest.fixture
def v2(tmp_path: Path) -> Containment:
    """A prepared v2 root with every limit controller, as on a pure v2 host."""
    mount = fake_v2(tmp_path / "cg", "cpuset cpu io memory pids")
    return prepare(detect(mount / "la", f"cgroup2 {mount} cgroup2 rw 0 0", V2_SELF))


@pytest.fixture
def v1(tmp_path: Path) -> Containment:
    """A prepared v1 layout without a v2 tree."""
    base = tmp_path / "cgroup"
    mounts = "".join(f"cgroup {base}/{c} cgroup rw,{c} 0 0\n" for c in V1_RUN_FILES)
    for controller in V1_RUN_FILES:
        (base / controller).mkdir(parents=True)
    return prepare(detect(base / "memory" / "la", mounts, ""))


def v2_run(containment: Containment, *files: str) -> RunCgroup:
    """The run's cgroup with the control files a cgroupfs would make on its mkdir."""
    cgroup = RunCgroup(containment, RUN_ID, CLAIM)
    assert cgroup.v2 is not None
    touch(cgroup.v2, *files)
    return cgroup


def v1_run(containment: Containment) -> RunCgroup:
    cgroup = RunCgroup(containment, RUN_ID, CLAIM)
    for controller, directory in cgroup.v1.items():
        touch(directory, *V1_RUN_FILES[controller])
    return cgroup


def test_a_runs_cgroup_is_named_after_the_run_and_its_claim_in_every_hierarchy(
    tmp_path: Path,
) -> None:
    both = Containment(
        "v1", "test", tmp_path / "unified" / "la", frozenset(), {"memory": tmp_path / "m" / "la"}
    )
    cgroup = RunCgroup(both, RUN_ID, CLAIM)
    assert cgroup.dirs == [tmp_path / "unified/la" / RUN_NAME, tmp_path / "m/la" / RUN_NAME]
    assert not cgroup.exists()


def test_v2_limits_are_written_to_memory_max_swap_max_cpu_max_and_pids_max(
    v2: Containment,
) -> None:
    cgroup = v2_run(v2, *V2_RUN_FILES)
    assert cgroup.v2 is not None
    cgroup.create(Limits(memory=128 * MIB, cpu=0.5, pids=64))
    assert cgroup.exists()
    assert (cgroup.v2 / "memory.max").read_text() == "134217728"
    assert (cgroup.v2 / "memory.swap.max").read_text() == "0"
    assert (cgroup.v2 / "cpu.max").read_text() == "50000 100000"
    assert (cgroup.v2 / "pids.max").read_text() == "64"


def test_v2_memory_limit_is_set_without_swap_accounting(v2: Containment) -> None:
    cgroup = v2_run(v2, "memory.max")  # a kernel without swap accounting: no swap.max
    assert cgroup.v2 is not None
    cgroup.create(Limits(memory=256 * MIB))
    assert (cgroup.v2 / "memory.max").read_text() == str(256 * MIB)
    assert not (cgroup.v2 / "memory.swap.max").exists()


@pytest.mark.parametrize(
    ("cores", "written"),
    [(2.0, "200000 100000"), (0.01, "1000 100000"), (0.001, "1000 100000")],
)
def test_v2_cpu_quota_is_cores_times_the_period_and_at_least_one_millisecond(
    v2: Containment, cores: float, written: str
) -> None:
    cgroup = v2_run(v2, "cpu.max")
    assert cgroup.v2 is not None
    cgroup.create(Limits(cpu=cores))
    assert (cgroup.v2 / "cpu.max").read_text() == written


def test_no_limits_only_makes_the_directory(v2: Containment) -> None:
    cgroup = RunCgroup(v2, RUN_ID, CLAIM)
    cgroup.create(Limits())
    assert cgroup.v2 is not None
    assert cgroup.v2.is_dir()
    assert list(cgroup.v2.iterdir()) == []


def test_a_limit_that_cannot_be_written_raises_so_the_run_is_not_started(
    v2: Containment,
) -> None:
    cgroup = v2_run(v2)  # no memory.max: the kernel would not take the limit either
    with pytest.raises(FileNotFoundError):
        cgroup.create(Limits(memory=128 * MIB))


def test_v1_limits_are_written_to_limit_in_bytes_cfs_quota_and_pids_max(v1: Containment) -> None:
    assert v1.version == "v1"
    cgroup = v1_run(v1)
    cgroup.create(Limits(memory=128 * 2**20, cpu=0.5, pids=64))
    memory, cpu, pids = cgroup.v1["memory"], cgroup.v1["cpu"], cgroup.v1["pids"]
    assert (memory / "memory.limit_in_bytes").read_text() == "134217728"
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == "134217728"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (pids / "pids.max").read_text() == "64"


def test_v1_memory_limit_is_set_when_swap_accounting_is_off(v1: Containment) -> None:
    cgroup = v1_run(v1)
    (cgroup.v1["memory"] / "memory.memsw.limit_in_bytes").unlink()
    cgroup.create(Limits(memory=64 * MIB))
    assert (cgroup.v1["memory"] / "memory.limit_in_bytes").read_text() == str(64 * MIB)


def test_v2_usage_is_peak_memory_oom_kills_and_cpu_seconds(v2: Containment) -> None:
    cgroup = v2_run(v2)
    assert cgroup.v2 is not None
    (cgroup.v2 / "memory.peak").write_text("52428800\n")
    (cgroup.v2 / "memory.events").write_text(
        "low 0\nhigh 0\nmax 17\noom 1\noom_kill 1\noom_group_kill 0\n"
    )
    (cgroup.v2 / "cpu.stat").write_text(
        "usage_usec 1500000\nuser_usec 1200000\nsystem_usec 300000\n"
        "nr_periods 30\nnr_throttled 12\nthrottled_usec 420000\n"
    )
    assert cgroup.usage() == Usage(peak_memory=52428800, cpu_seconds=1.5, oom_kills=1)


def test_v1_usage_is_max_usage_oom_kills_and_cpuacct_usage(v1: Containment) -> None:
    cgroup = v1_run(v1)
    (cgroup.v1["memory"] / "memory.max_usage_in_bytes").write_text("1048576\n")
    (cgroup.v1["memory"] / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
    )
    (cgroup.v1["cpuacct"] / "cpuacct.usage").write_text("2500000000\n")
    assert cgroup.usage() == Usage(peak_memory=1048576, cpu_seconds=2.5, oom_kills=2)


def test_usage_that_cannot_be_read_is_unknown_and_no_oom_kills(
    v2: Containment, v1: Containment
) -> None:
    assert v2_run(v2).usage() == Usage(None, None, 0)
    assert v1_run(v1).usage() == Usage(None, None, 0)


@pytest.mark.parametrize(
    ("events", "alive"), [("populated 1\nfrozen 0\n", True), ("populated 0\nfrozen 0\n", False)]
)
def test_v2_run_is_alive_while_cgroup_events_says_populated(
    v2: Containment, events: str, alive: bool
) -> None:
    cgroup = v2_run(v2, "cgroup.procs")
    assert cgroup.v2 is not None
    (cgroup.v2 / "cgroup.events").write_text(events)
    assert cgroup.populated() is alive


def test_v1_run_is_alive_while_a_cgroup_procs_lists_a_process(v1: Containment) -> None:
    cgroup = v1_run(v1)
    assert not cgroup.populated()
    (cgroup.v1["pids"] / "cgroup.procs").write_text("4242\n4243\n")
    (cgroup.v1["memory"] / "cgroup.procs").write_text("4242\n")
    assert cgroup.populated()
    assert cgroup.pids() == [4242, 4243]


def test_v2_kill_writes_cgroup_kill_and_says_whether_the_cgroup_emptied(
    v2: Containment,
) -> None:
    cgroup = v2_run(v2, "cgroup.kill", "cgroup.procs")
    assert cgroup.v2 is not None
    (cgroup.v2 / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    assert cgroup.kill(patience=0) is True
    assert (cgroup.v2 / "cgroup.kill").read_text() == "1"
    (cgroup.v2 / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert cgroup.kill(patience=0) is False


def test_v1_kill_freezes_and_thaws_the_run(v1: Containment) -> None:
    cgroup = v1_run(v1)
    assert cgroup.kill(patience=0) is True
    assert (cgroup.v1["freezer"] / "freezer.state").read_text() == "THAWED"


def test_remove_removes_every_directory_of_the_run(v1: Containment) -> None:
    cgroup = RunCgroup(v1, RUN_ID, CLAIM)
    cgroup.create(Limits())
    assert all(d.is_dir() for d in cgroup.dirs)
    assert cgroup.remove(patience=0) is True
    assert not cgroup.exists()
    assert cgroup.remove(patience=0) is True  # again: nothing left to do


def test_a_directory_that_will_not_go_is_reported_not_raised(
    v2: Containment, caplog: pytest.LogCaptureFixture
) -> None:
    cgroup = v2_run(v2, "cgroup.procs")  # a file inside: rmdir fails as on a busy cgroup
    assert cgroup.remove(patience=0) is False
    assert cgroup.exists()
    assert "processes are still in it" in caplog.text


@pytest.mark.parametrize("containment", [NONE_DISABLED, Containment("none", "not mounted")])
def test_without_containment_a_runs_cgroup_is_nothing_and_does_nothing(
    containment: Containment,
) -> None:
    cgroup = RunCgroup(containment, RUN_ID, CLAIM)
    assert cgroup.dirs == []
    cgroup.create(Limits())
    assert not cgroup.exists()
    assert cgroup.pids() == []
    assert not cgroup.populated()
    assert cgroup.kill(patience=0) is True
    assert cgroup.usage() == Usage()
    assert cgroup.remove(patience=0) is True


# -- the real cgroup2 tree of this host ------------------------------------------------------

REAL_V2 = Path("/sys/fs/cgroup/unified")


def _real_v2_mounted() -> bool:
    try:
        text = Path("/proc/self/mounts").read_text()
    except OSError:
        return False
    return Mount(REAL_V2, "cgroup2") in cgroups.parse_mounts(text)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups")
@pytest.mark.skipif(not _real_v2_mounted(), reason=f"{REAL_V2} is no cgroup2 mount here")
def test_a_real_run_cgroup_holds_a_process_and_kill_ends_it() -> None:
    root = REAL_V2 / f"la-unit-{uuid.uuid4().hex[:12]}"
    try:
        root.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup at {root}: {exc}")
    containment = Containment("v2", "tracking and kill only", root)
    cgroup = RunCgroup(containment, RUN_ID, CLAIM)
    proc: subprocess.Popen[bytes] | None = None
    try:
        cgroup.create(Limits())
        assert cgroup.v2 is not None
        assert (cgroup.v2 / "cgroup.events").exists()  # made by the kernel
        assert not cgroup.populated()
        proc = subprocess.Popen(["sleep", "60"])
        (cgroup.v2 / "cgroup.procs").write_text(str(proc.pid))
        assert cgroup.pids() == [proc.pid]
        assert cgroup.populated()
        assert cgroup.kill() is True
        assert proc.wait(timeout=5) == -9
        assert not cgroup.populated()
        assert cgroup.remove() is True
        assert not cgroup.v2.exists()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if cgroup.v2 is not None and cgroup.v2.exists():
            cgroup.v2.rmdir()
        root.rmdir()
