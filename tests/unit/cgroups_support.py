"""Shared by the cgroup unit tests (test_cgroup_mounts, test_cgroup_detect,
test_cgroup_prepare, test_run_cgroup): what /proc/self/mounts and /proc/self/cgroup say
on three kinds of host, and directories laid out like a cgroupfs under tmp_path.

Most tests run against such fake trees: this host's real v2 tree offers no controllers,
and a fake one lets the limit files be read back. A fake cgroupfs does not create a
cgroup's control files on mkdir, so the tests create the ones the code writes.
"""

from __future__ import annotations

from pathlib import Path

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
