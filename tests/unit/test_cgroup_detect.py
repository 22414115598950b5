"""agent/worker/cgroups.py: what containment a host gives (detect) — none, v2, or v1
limits beside a v2 tree — and where the agent's cgroup root is, by default or as
--cgroup-root. Runs against fake cgroupfs trees under tmp_path; detect creates nothing."""

from __future__ import annotations

from pathlib import Path

from agent.worker import cgroups
from agent.worker.cgroups import Containment, detect
from tests.unit.cgroups_support import (
    HYBRID_SELF,
    NO_CGROUP_MOUNTS,
    V2_MOUNTS,
    V2_SELF,
    fake_hybrid,
    fake_v2,
    hybrid_mounts,
)

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
