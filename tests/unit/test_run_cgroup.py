"""agent/worker/runcgroup.py: one run's cgroup — its name, limits, usage, liveness, kill
and removal — in v2 and v1 layouts and without containment.

Most tests run against a fake cgroupfs under tmp_path, which does not create a cgroup's
control files on mkdir, so the tests create the ones the code writes. One test uses the
real cgroup2 mount when run as root.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from agent.core.limits import MIB, Limits
from agent.worker import cgroups
from agent.worker.cgroups import NONE_DISABLED, Containment, Mount, detect, prepare
from agent.worker.runcgroup import RunCgroup, Usage
from tests.unit.cgroups_support import V2_SELF, fake_v2, touch

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
