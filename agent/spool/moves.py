"""The spool: a maildir-style directory; a run's state on this host is its folder.

    tmp/   written ahead, before the claim          (the poller)
    new/   claimed, waiting for a worker            (published by the poller)
    cur/   taken by a worker, leased by flock       (while its process runs)
    done/  finished; ``<id>.outcome`` says how
    failed/ refused: unreadable spec or another pool; ``<id>.reason`` says why
    runs/<id>/<claim>/ one execution's output log, exit status and outcome (not a state
               folder); ``runs/<id>/cancel`` asks the worker running it to stop it
    outbox/ reports the API could not take yet (agent/api/outbox.py; not specs)

This module is the only code that moves spec files. Legal moves:
tmp->new (publish), tmp->gone (discard), new->cur (take), cur->cur (adopt: a new
lease on an orphaned run), cur->done (finish), new->done (cancel_waiting: cancelled
before any worker took it), new|cur->failed (refuse). Everything
lives on one filesystem, so every move is an atomic rename or link (never
shutil.move, which silently copies across filesystems).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent.core.errors import SpoolError
from agent.spool import guard, tidy
from agent.spool.files import fsync_dir, read_json_object, replace_file_durably, write_file_durably
from agent.spool.folders import CUR as CUR
from agent.spool.folders import DONE as DONE
from agent.spool.folders import FAILED as FAILED
from agent.spool.folders import NEW as NEW
from agent.spool.folders import RUNS as RUNS
from agent.spool.folders import STATE_DIRS as STATE_DIRS
from agent.spool.folders import SUFFIX as SUFFIX
from agent.spool.folders import TMP as TMP
from agent.spool.folders import Folders

log = logging.getLogger(__name__)

CANCEL_FILE = "cancel"  # in runs/<id>/: the poller asks the run's worker to stop it
CANCEL, LOST = "cancel", "lost"  # why: Cancelling in Prefect; reaped while cut off


@dataclass
class Lease:
    """A spec taken by this process. The flock lives as long as ``fd`` is open in any
    process (the per-run shim inherits it), so a dead owner frees the run for adoption."""

    run_id: str
    path: Path
    fd: int
    data: bytes
    adopted: bool = False  # taken over from cur/ after its worker and shim died
    let_go: bool = False  # ...or left there by a live worker (stopping, a spool error)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Spool(Folders):
    """The spool's folders (agent/spool/folders.py) and every move of a spec."""

    def _path(self, state: str, run_id: str) -> Path:
        return self.root / state / f"{run_id}{SUFFIX}"

    # -- listing ---------------------------------------------------------------------

    def run_ids(self, state: str) -> list[str]:
        """Run ids in a state folder, oldest first (by mtime, then name)."""
        entries = []
        try:
            with os.scandir(self.dir(state)) as it:
                for entry in it:
                    if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                        try:
                            entries.append((entry.stat().st_mtime, entry.name[: -len(SUFFIX)]))
                        except FileNotFoundError:
                            continue  # moved while we looked
        except FileNotFoundError:
            return []
        return [run_id for _, run_id in sorted(entries)]

    def count(self, state: str) -> int:
        return len(self.run_ids(state))

    def depth(self) -> dict[str, int]:
        return {"waiting": self.count(NEW), "running": self.count(CUR)}

    def read(self, state: str, run_id: str) -> bytes:
        """A spec's bytes; something else under its name is set aside (NotRegularFile)."""
        path = self._path(state, run_id)
        try:
            return guard.read_regular(path)
        except guard.NotRegularFile as exc:
            self._set_aside(exc)
            raise

    def screen(self) -> int:
        """Set aside whatever is named like a spec in tmp/, new/ or cur/ but is not a
        regular file (a flow can write there); how many went."""
        return sum(len(guard.screen(self.dir(s), self.dir(FAILED))) for s in (TMP, NEW, CUR))

    def _set_aside(self, exc: guard.NotRegularFile) -> None:
        guard.set_aside_logged(exc, self.dir(FAILED))

    def contains(self, run_id: str) -> str | None:
        """The state folder holding ``run_id``, if any."""
        for state in STATE_DIRS:
            if self._path(state, run_id).exists():
                return state
        return None

    # -- the poller's moves ----------------------------------------------------------

    def write_ahead(self, run_id: str, data: bytes) -> None:
        """Write a spec to tmp/ durably; a half-written one never leaves tmp/."""
        path = self._path(TMP, run_id)
        try:
            path.unlink(missing_ok=True)  # a leftover of ours for the same run
            write_file_durably(path, data)
            fsync_dir(path.parent)
        except OSError as exc:
            # Not durable, so no claim is made with it: leave nothing for reconcile.
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            raise SpoolError(f"cannot write spec for flow run {run_id}: {exc}") from exc

    def publish(self, run_id: str) -> None:
        """tmp -> new, by link then unlink (EEXIST means a second delivery: keep one)."""
        src, dst = self._path(TMP, run_id), self._path(NEW, run_id)
        try:
            if os.stat(src).st_nlink > 1:
                # A publish cut short between its link and its unlink (the poller died):
                # the spec is in new/, or taken to cur/ or done/ since (a rename keeps the
                # file). Linking it again would hand the run to a second worker.
                log.warning("flow run %s was published already; dropping its tmp copy", run_id)
                src.unlink()
                fsync_dir(src.parent)
                return
            os.link(src, dst)
        except FileExistsError:
            log.warning("flow run %s was already waiting in the spool; kept one copy", run_id)
        except OSError as exc:
            raise SpoolError(f"cannot publish spec for flow run {run_id}: {exc}") from exc
        # The spec is visible in new/ already: a failure from here on is logged, not
        # raised. The tmp copy goes whatever the syncs say: once a worker has taken the
        # spec from new/, reconcile would publish a copy left here a second time.
        try:
            fsync_dir(dst.parent)
        except OSError as exc:
            log.warning("flow run %s published, but new/ could not be synced: %s", run_id, exc)
        try:
            src.unlink()
            fsync_dir(src.parent)
        except OSError as exc:
            log.warning("flow run %s published, but tmp cleanup failed: %s", run_id, exc)

    def discard(self, run_id: str) -> None:
        """Drop a write-ahead spec whose claim did not succeed."""
        self._path(TMP, run_id).unlink(missing_ok=True)

    # -- the worker's moves ----------------------------------------------------------

    def _open_spec(self, path: Path) -> int | None:
        """An fd on the spec at ``path``; None when it is gone, or was not a regular
        file and has been set aside to failed/."""
        try:
            return guard.open_regular(path)
        except FileNotFoundError:
            return None
        except guard.NotRegularFile as exc:
            self._set_aside(exc)
            return None

    def take(self) -> Lease | None:
        """Take the oldest waiting spec: flock it, then rename new -> cur.

        Locking before the rename means a spec in cur/ is never unlocked while its
        owner lives. Of racing workers exactly one wins the rename; the others see
        the lock held or the file gone and move on.
        """
        for run_id in self.run_ids(NEW):
            src = self._path(NEW, run_id)
            fd = self._open_spec(src)
            if fd is None:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                dst = self._path(CUR, run_id)
                os.rename(src, dst)
            except (BlockingIOError, FileNotFoundError):
                os.close(fd)
                continue  # lost the race to another worker
            except OSError as exc:
                os.close(fd)
                raise SpoolError(f"cannot take spec for flow run {run_id}: {exc}") from exc
            try:
                fsync_dir(dst.parent)
                data = os.pread(fd, 1 << 24, 0)
            except OSError as exc:
                os.close(fd)
                raise SpoolError(f"cannot read spec for flow run {run_id}: {exc}") from exc
            return Lease(run_id, dst, fd, data)
        return None

    def adopt(self) -> Lease | None:
        """Lease a spec in cur/ that nobody holds: its worker died and its shim (which
        inherits the lease) has ended too, or never started. Same locking as `take`, so
        of racing workers one wins; a spec retired between listing and locking is
        recognised by its inode and skipped."""
        for run_id in self.run_ids(CUR):
            path = self._path(CUR, run_id)
            fd = self._open_spec(path)
            if fd is None:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                still_here = os.fstat(fd).st_ino == os.stat(path).st_ino
                data = os.pread(fd, 1 << 24, 0) if still_here else b""
            except (BlockingIOError, FileNotFoundError):
                still_here = False
            except OSError as exc:
                os.close(fd)
                raise SpoolError(f"cannot adopt flow run {run_id}: {exc}") from exc
            if not still_here:
                os.close(fd)
                continue
            return Lease(run_id, path, fd, data, adopted=True)
        return None

    def finish(self, lease: Lease, outcome: str, claim: str | None = None) -> None:
        """cur -> done, with ``<id>.outcome`` beside it; releases the lease. The note is
        also kept in the claim's execution folder, where a later claim's cannot replace it."""
        note = _outcome_note(outcome)
        if claim:
            execution = self.execution_path(lease.run_id, claim)
            if execution.is_dir():
                try:
                    replace_file_durably(execution / "outcome.json", note)
                except OSError as exc:
                    raise SpoolError(f"cannot record the outcome in {execution}: {exc}") from exc
        self._retire(lease, DONE, ".outcome", note)

    # -- cancellation ----------------------------------------------------------------

    def cancel_waiting(self, run_id: str, reason: str) -> bool:
        """new -> done with the outcome "cancelled", unless a worker takes it first.

        Same discipline as `take`: flock the spec, then rename it. A worker holds the
        flock from before its rename until its run ends, so holding it here means no
        worker is taking the spec; the inode check catches one taken and finished
        between our open and our flock. Of this and racing workers exactly one wins.
        True if the spec was moved here; False if it was not waiting (any more).
        """
        src = self._path(NEW, run_id)
        fd = self._open_spec(src)
        if fd is None:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino != os.stat(src).st_ino:
                    return False  # taken (and finished) meanwhile; a new copy is not ours
            except (BlockingIOError, FileNotFoundError):
                return False  # a worker has it
            lease = Lease(run_id, src, fd, b"")
            fd = -1  # the lease closes it
            self._retire(lease, DONE, ".outcome", _outcome_note("cancelled", reason))
            return True
        except OSError as exc:
            raise SpoolError(f"cannot cancel waiting flow run {run_id}: {exc}") from exc
        finally:
            if fd >= 0:
                os.close(fd)

    def request_cancel(self, run_id: str, claim: str, reason: str, why: str = CANCEL) -> bool:
        """Ask the worker running ``run_id`` to stop it: create ``runs/<id>/cancel``,
        naming the claim (the spec's transition id) it is for, so that a request left
        behind cannot stop a later claim of the same run (a retry), and why: ``cancel``
        (Cancelling in Prefect: the worker reports Cancelled) or ``lost`` (another agent
        marked the run Crashed while this host was cut off: the worker proposes nothing).
        Idempotent: True only when this call created the request."""
        path = self.run_dir(run_id) / CANCEL_FILE
        body = {"claim": claim, "why": why, "reason": reason, "at": time.time()}
        note = json.dumps(body).encode()
        try:
            try:
                write_file_durably(path, note)
                fsync_dir(path.parent)
            except FileExistsError:
                if self.stop_requested(run_id, claim) == why:
                    return False
                replace_file_durably(path, note)  # left from an earlier claim of this run
        except OSError as exc:
            raise SpoolError(f"cannot request cancellation of flow run {run_id}: {exc}") from exc
        return True

    def stop_requested(self, run_id: str, claim: str) -> str | None:
        """Why the poller asked for this claim of ``run_id`` to be stopped (``cancel`` or
        ``lost``), or None."""
        body = read_json_object(self.dir(RUNS) / run_id / CANCEL_FILE)
        if body is None or body.get("claim") != claim:
            return None
        why = body.get("why", CANCEL)  # requests written before 'why' were cancellations
        return why if why in (CANCEL, LOST) else CANCEL

    def cancel_requested(self, run_id: str, claim: str) -> bool:
        """Whether the poller asked for this claim of ``run_id`` to be cancelled."""
        return self.stop_requested(run_id, claim) == CANCEL

    def refuse(self, lease: Lease, reason: str) -> None:
        """cur -> failed, with ``<id>.reason`` beside it; releases the lease."""
        self._retire(lease, FAILED, ".reason", reason.encode())

    def _retire(self, lease: Lease, state: str, note_suffix: str, note: bytes) -> None:
        """Write the note first, so a spec in done/ or failed/ always has one."""
        dst = self._path(state, lease.run_id)
        try:
            # A cancel request ends with its run (claims are told apart anyway).
            (self.dir(RUNS) / lease.run_id / CANCEL_FILE).unlink(missing_ok=True)
            replace_file_durably(self.dir(state) / f"{lease.run_id}{note_suffix}", note)
            if dst.exists() and os.path.samefile(lease.path, dst):
                # rename() between two links of one file does nothing: drop ours.
                lease.path.unlink()
            else:
                os.rename(lease.path, dst)
            fsync_dir(dst.parent)
            # The spec's take record ends with it (agent/spool/takes.py).
            (self.dir(CUR) / f"{lease.run_id}.takes").unlink(missing_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot move flow run {lease.run_id} to {state}/: {exc}") from exc
        finally:
            lease.release()
        tidy.forget_env_values(dst)

    def prune(self, cutoff: float) -> int:
        """Delete what finished runs left behind before ``cutoff`` (Unix time): entries of
        done/ and failed/, and runs/<id>/ folders of runs with no spec in tmp/, new/ or
        cur/ whose newest file is older. Returns how many entries went. Never follows a
        symlink; an entry that vanishes meanwhile is skipped."""
        pruned = 0
        for state in (DONE, FAILED):
            for entry in tidy.entries(self.dir(state)):
                if tidy.newest_mtime(entry) < cutoff and tidy.remove(entry):
                    pruned += 1
        active = {rid for state in (TMP, NEW, CUR) for rid in self.run_ids(state)}
        for entry in tidy.entries(self.dir(RUNS)):
            if entry.name in active:
                continue  # a live run's folder goes only after its spec is finished
            if tidy.newest_mtime(entry) < cutoff and tidy.remove(entry):
                pruned += 1
        return pruned

    def run_dir(self, run_id: str) -> Path:
        """Per-run folder: the cancel request, and one folder per claim (execution)."""
        path = self.dir(RUNS) / run_id
        try:
            path.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create run folder {path}: {exc}") from exc
        return path

    def execution_path(self, run_id: str, claim: str) -> Path:
        """``runs/<id>/<claim>/``: one execution's output log, exit status and outcome.
        A later claim of the same run (a retry, a resume) gets its own folder, so no
        execution overwrites another's record."""
        return self.dir(RUNS) / run_id / claim

    def execution_dir(self, run_id: str, claim: str) -> Path:
        path = self.execution_path(run_id, claim)
        try:
            self.run_dir(run_id)
            path.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create run folder {path}: {exc}") from exc
        return path


def _outcome_note(outcome: str, reason: str | None = None) -> bytes:
    body: dict[str, object] = {"outcome": outcome, "at": time.time()}
    if reason:
        body["reason"] = reason
    return json.dumps(body).encode()
