"""Every tunable default in one place, with the reason for its value."""

from __future__ import annotations

# Pool type this agent creates its work pool with: Prefect accepts any string, and a
# distinct type keeps Prefect's own workers from claiming runs meant for this agent.
POOL_TYPE = "local-agent"

# Prefect 1's default agent name.
AGENT_NAME = "agent"

# API client: every call has both timeouts; transient failures retry with capped
# exponential backoff and jitter until the deadline, then surface to the caller's loop.
API_CONNECT_TIMEOUT = 5.0
API_READ_TIMEOUT = 30.0
API_RETRY_DEADLINE = 20.0
API_RETRY_INITIAL_WAIT = 0.5
# The wait between retries is capped low so that a call retrying through an outage
# notices the API's return within 2 s (1.5 s + up to 0.5 s of jitter); the deadline bounds
# the number of calls (about 15), after which the caller's loop takes over.
API_RETRY_MAX_WAIT = 1.5
API_RETRY_AFTER_CAP = 60.0  # a server's Retry-After is honoured up to this

# Poller: short interval while work flows, doubling to a cap while idle (Prefect 1
# backed off 0.25 s .. 10 s); runs due within PREFETCH are claimed early so that
# the engine (about 1.2 s to import prefect) starts them on time. While the events stream
# is connected, new runs, retries and cancellations come by push and the idle cap is
# POLL_INTERVAL_MAX_PUSHED: with the heartbeat (2/min) and the lost-hosts check (1/min)
# that keeps idle requests at 5/min, below Prefect's own worker (a poll every 10 s).
# Each poll looks the cap in force past PREFETCH, so a run already scheduled then is seen
# before its window opens and the poller wakes for it: the longer sleep makes it no later.
POLL_INTERVAL_MIN = 0.5
POLL_INTERVAL_MAX = 10.0
POLL_INTERVAL_MAX_PUSHED = 30.0
PREFETCH_SECONDS = 10.0
POLL_LIMIT = 200  # runs asked per poll; labels are filtered here, so leave headroom
HEARTBEAT_SECONDS = 30.0  # the server marks a worker offline after 3 missed beats
# Host loss (agent/core/reap.py): another agent's runs are marked Crashed once its
# heartbeat has been silent this long; the check (one read of the pool's workers; the
# pool's runs only when some agent is silent) runs every tenth of that, but not more often
# than REAP_CHECK_SECONDS nor less than REAP_CHECK_MAX_SECONDS (agent/core/reap.py).
REAP_AFTER_SECONDS = 600.0
REAP_CHECK_SECONDS = 10.0
REAP_CHECK_MAX_SECONDS = 60.0
# The events stream (push wake-ups): when it is down, it is tried again with backoff
# doubling from 1 s up to this; polling goes on meanwhile.
EVENTS_RETRY_MAX = 60.0
LOCAL_CHECK_SECONDS = 0.25  # how often a sleeping poller looks at local things
# ... and for a freed worker, while runs wait for one: a burst's next run is claimed
# within this of a slot freeing (a look is two folder reads and the registry's).
BACKLOG_CHECK_SECONDS = 0.05
SPOOL_RECHECK_SECONDS = 1.0  # how often it probes a spool it could not write to

# Worker.
WORKER_IDLE_SLEEP = 0.5
FLOW_LOG_MAX_BYTES = 10 * 1024 * 1024  # per run; one rotated copy is kept
WORKER_GROUP = "agent-worker"
# A worker whose spool write fails (a full disk) waits this long before trying again.
SPOOL_RETRY_SECONDS = 5.0  # supervisor program the poller starts with itself

# Cancellation (a run set to Cancelling in Prefect). The poller asks the server for the
# spool's waiting and running runs in Cancelling every CANCEL_CHECK seconds (no request
# when the spool holds none); a worker looks for the poller's request every
# CANCEL_WATCH seconds while its flow runs, sends SIGTERM to the run's process group
# and SIGKILL after CANCEL_GRACE (Prefect's engine reports Crashed on SIGTERM and exits
# at once; the grace is for the flow's own clean-up and for flows that ignore SIGTERM).
CANCEL_CHECK_SECONDS = 2.0
# A look is a waitpid and one open() that finds no file: 10 a second cost nothing, and
# the request is acted on within 0.1 s (0.25 s on average at 0.5: a quarter of the
# 1 s cancellation target, ops/benchmark.md).
CANCEL_WATCH_SECONDS = 0.1
CANCEL_GRACE_SECONDS = 30.0

# Run containment (agent/worker/cgroups.py). strict: a run asking for a limit this host
# cannot enforce is Failed; best-effort: it runs without it, with a warning in its log.
CONTAINMENT = "strict"
CONTAINMENT_MODES = ("strict", "best-effort", "off")
# How a worker starts each run's process (agent/worker/warm.py); and after how many runs
# the warm process is started afresh (what a long life may gather: caches, leaks).
LAUNCH = "warm"
LAUNCH_MODES = ("warm", "cold")
WARM_RECYCLE_RUNS = 100
# When a run crashed, timed out or was OOM-killed, this many of its last output lines go
# to its log in Prefect (the flight recorder); 0 turns it off.
CRASH_TAIL_LINES = 50

# How often the backend config variable (--agent-config-id) is read again.
AGENT_CONFIG_REFRESH = 30.0

# Stranded runs: Pending or Running in Prefect, labelled as claimed by this agent on this
# host, with no spec in the spool (the spool was lost or replaced) and no live process.
# Looked for at the first successful poll after start, then every STRANDED_CHECK seconds
# (one POST /flow_runs/filter per STRANDED_PAGE runs of the pool in flight; 200 is the
# server's default and largest `limit`), and again after STRANDED_RETRY when a look failed.
# A run whose current state is younger than STRANDED_AFTER is left alone: a claim made
# a moment ago, by a second agent of the same name on this host with a spool of its own,
# is still on its way to that agent's workers. A lost spool is rare; a minute is cheap.
STRANDED_CHECK_SECONDS = 300.0
STRANDED_RETRY_SECONDS = 30.0
STRANDED_AFTER_SECONDS = 60.0
STRANDED_PAGE = 200

# A run from a poll answered longer ago than this is read again before it is claimed: the
# server would accept a claim of a run another agent has finished meanwhile (a rerun).
CLAIM_FRESH_SECONDS = 1.0

# A claimed run whose labels did not land (a busy server's 503 once the client's retries
# ran out) is labelled again at the next round, and every LABEL_RETRY seconds while that
# fails: without its labels the stranded look and a fleet's reaper cannot find it.
LABEL_RETRY_SECONDS = 5.0

# Retention: done/, failed/ and runs/ keep a finished run this long (--retention), and
# the poller looks for what is older once an hour (and at start).
RETENTION_SECONDS = 7 * 86400.0
RETENTION_CHECK_SECONDS = 3600.0

# A stopping poller exits within this long even if an API call is in flight
# (supervisor's stopwaitsecs for it is 10 s; the issue asks for one second).
POLLER_EXIT_DEADLINE = 0.8

# API outage. After a poll whose calls failed through their whole retry deadline, the
# poller makes one attempt per call (its loop backs off, doubling to POLL_INTERVAL_MAX,
# with jitter) and between them probes GET /health every API_PROBE_SECONDS (one cheap
# request, refused at once while the server is down), polling again as soon as a probe
# succeeds. A worker with a run to start probes the same way, so nothing is launched
# into an API the flow's engine cannot reach.
API_PROBE_SECONDS = 1.0
API_PROBE_TIMEOUT = 2.0

# Flow runs get PREFECT_CLIENT_MAX_RETRIES=8 unless it is set (Prefect's default is 5):
# the engine then keeps retrying a state report through about 8 minutes of outage
# (2 s, 4 s, ... 256 s) instead of 1, so a flow that finishes while the API is away
# still reports its own Completed.
FLOW_CLIENT_MAX_RETRIES = "8"

# Crash loops. Supervisor restarts a worker that dies after its startsecs (3 s) at once
# and for ever: its own backoff and FATAL apply only to deaths within startsecs. A worker
# whose previous process with the same id exited unexpectedly (killed, or an error out
# of its loop; never a stop by SIGTERM) while CRASH_LOOP_THRESHOLD or more such exits
# fall within CRASH_LOOP_WINDOW waits before it takes runs: CRASH_LOOP_FIRST_DELAY at
# the threshold, doubling with each further exit, at most CRASH_LOOP_MAX_DELAY. 5 in 10
# minutes is far above an OOM kill or an operator's kill -9 now and then (those restart
# at once, as before), and low enough that a worker dying on every run cannot burn
# through the queue's runs (each adopted and crashed) or the CPU. The cap keeps a worker
# whose cause has gone away from sitting idle long; alive while it waits, it holds no
# run and counts as no free slot, and `supervisorctl restart` (a clean stop) ends it.
CRASH_LOOP_WINDOW_SECONDS = 600.0
CRASH_LOOP_THRESHOLD = 5
CRASH_LOOP_FIRST_DELAY = 10.0
CRASH_LOOP_MAX_DELAY = 300.0
# Exit times kept per worker id (workers/<id>.exits), newest last: bounds the file.
CRASH_LOOP_HISTORY_MAX = 100
