"""agent/worker/cgroups.py: reading /proc/self/mounts and /proc/self/cgroup on a pure
v2 host, a hybrid v1/v2 host, and a host without cgroups."""

from __future__ import annotations

from pathlib import Path

from agent.worker import cgroups
from agent.worker.cgroups import Mount
from tests.unit.cgroups_support import (
    HYBRID_SELF,
    NO_CGROUP_MOUNTS,
    V2_MOUNTS,
    V2_SELF,
    hybrid_mounts,
)

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
