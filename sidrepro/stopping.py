"""When one invocation of a distillation stops before its run is finished: ahead of its job's time limit, on a
scheduler's signal, or on request. Every such stop ends with a checkpoint and the exit status ``EXIT_CONTINUE``, so
that a run longer than any job allowance becomes several jobs and nothing is lost but the iteration in flight.

The job's deadline comes from the scheduler, not from the experiment config:

* SLURM: the job's end time (``squeue -j $SLURM_JOB_ID -o %e``), read by rank 0 at start and again every few
  minutes, since an administrator may extend a running job's limit;
* ``SIDREPRO_DEADLINE``: a unix time, for other schedulers (set it in the job script), or ``+S``: S seconds after
  the stopper is made (in `sidrepro distill` once the networks are loaded; in `sidrepro sample` before the model
  loads), a fixed time budget per invocation.

The run stops once the time left is below the *lead*: the time to finish the iteration in flight and write a
checkpoint, with a margin. Automatic by default: twice the checkpoint write time (measured on this run's last
checkpoint, or before the first one estimated from the checkpoint's bytes at a conservative write rate), plus twice
the slowest iteration seen, plus a fixed margin. ``SIDREPRO_STOP_LEAD`` (seconds) sets it explicitly; a lead shorter
than a measured checkpoint write is refused, since the job would be killed mid-write.

A run that scores its generator snapshots as it trains (snapshot selection) also checks, before each scoring,
that it fits before the lead (the last scoring's measured duration; before the first, an estimate); when it does
not, it stops there with a checkpoint and the next invocation scores that snapshot first.

Other stops: SIGTERM or SIGUSR1 (preemption, ``scancel --signal``), and a file ``STOP`` in the run folder (touch it
to stop a run cleanly from a login node; it is removed when honoured). Signals are best effort: a scheduler that
sends SIGTERM at the limit itself kills the job a grace period later (``KillWait``, 30 s by default), which a large
checkpoint does not fit in; the deadline is what makes time limits cost nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

EXIT_CONTINUE = 75  # sysexits EX_TEMPFAIL: not finished, run the same command again to continue
STOP_FILE = "STOP"
MARGIN_S = 60.0  # scheduler clock skew, the log and status writes, the process exit
WRITE_RATE_GBPS = 0.5  # per rank, for the estimate before the first measured checkpoint (shared filesystems)
REQUERY_S = 300.0


def requeue_slurm_job(env: dict[str, str] | None = None) -> bool:
    """Put this SLURM batch job back in the queue (``scontrol requeue``), so that its script runs again and
    continues from the checkpoint; SLURM ends this run of the job at once and starts the next when it is scheduled
    (not before about two minutes). Returns False, saying why, outside SLURM or where the job may not be requeued."""
    job = (os.environ if env is None else env).get("SLURM_JOB_ID")
    if not job:
        print("not inside a SLURM job: run the same command again to continue", flush=True)
        return False
    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"scontrol requeue {job} failed ({proc.stderr.strip()}): this job may not be requeued. Submit with "
              "--requeue (the SLURM profile's `slurm-requeue: true`), or run the workflow again to continue",
              flush=True)
        return False
    print(f"SLURM job {job} requeued: it continues from the checkpoint when it starts again", flush=True)
    time.sleep(120)  # SLURM ends this run of the job now; exiting first could race the requeue
    return True


class LeadTooShortError(ValueError):
    """The configured stop lead cannot hold a checkpoint write, or the job's limit leaves no time to train."""


def slurm_end_time(job_id: str, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> float | None:
    """The unix time at which SLURM ends job ``job_id`` (its time limit), or None when unlimited or unknown."""
    try:
        out = run(["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.strip() if out.returncode == 0 else ""
    try:  # squeue prints local time, as naive datetime.timestamp() reads it
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:  # "N/A", "Unknown", "" (no limit, or the job is not known to this squeue)
        return None


def checkpoint_seconds_from(status: dict) -> float:
    """How long a checkpoint of a run takes to write, from its ``status.json``: the last measured write, or, when
    the last write never completed (``checkpoint_started`` still set: the job ended during it), at least twice the
    time that write had before its job's end. Without the second rule a lead too short for the filesystem would
    lose every stop checkpoint, and the run would never progress."""
    seconds = float(status.get("checkpoint_seconds") or 0.0)
    started, end = float(status.get("checkpoint_started") or 0.0), float(status.get("job_end") or 0.0)
    if started and end > started:
        seconds = max(seconds, 2.0 * (end - started))
    return seconds


def auto_lead(checkpoint_s: float, iteration_s: float) -> float:
    """Seconds of warning a job needs before its limit: the iteration in flight, a checkpoint, and margins."""
    return 2.0 * checkpoint_s + 2.0 * iteration_s + MARGIN_S


class Stopper:
    """Decides, once per iteration, whether this invocation stops. ``query_scheduler`` on one rank only (rank 0);
    every rank must then agree through a collective (the trainer's ``_any_rank``)."""

    def __init__(self, run_dir: Path, *, checkpoint_bytes: int, measured_checkpoint_s: float = 0.0,
                 measured_evaluation_s: float = 0.0, query_scheduler: bool = True, env: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.time,
                 end_time: Callable[[str], float | None] = slurm_end_time) -> None:
        env = dict(os.environ if env is None else env)
        self.run_dir, self.clock, self._end_time = Path(run_dir), clock, end_time
        self.job_id = env.get("SLURM_JOB_ID", "") if query_scheduler else ""
        self.estimated_checkpoint_s = checkpoint_bytes / (WRITE_RATE_GBPS * 1e9)
        self.checkpoint_s = measured_checkpoint_s
        self.iteration_s = 0.0
        self.evaluation_s = measured_evaluation_s
        self.explicit_lead = float(env["SIDREPRO_STOP_LEAD"]) if env.get("SIDREPRO_STOP_LEAD") else None
        if self.explicit_lead is not None and measured_checkpoint_s and self.explicit_lead < measured_checkpoint_s:
            raise LeadTooShortError(
                f"SIDREPRO_STOP_LEAD={self.explicit_lead:g} s is shorter than writing one checkpoint of this run "
                f"({measured_checkpoint_s:.0f} s, measured): the job would be killed mid-write. Set it to at least "
                f"{auto_lead(measured_checkpoint_s, 0):.0f} s, or unset it for the automatic lead")
        given = env.get("SIDREPRO_DEADLINE", "") if query_scheduler else ""
        self._fixed_deadline = (clock() + float(given[1:]) if given.startswith("+") else float(given)) if given \
            else None
        self._end: float | None = None
        self._queried = -float("inf")
        self._signal = ""
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self._signal = signal.Signals(signum).name

    def observe_iteration(self, seconds: float) -> None:
        self.iteration_s = max(self.iteration_s, seconds)

    def observe_checkpoint(self, seconds: float) -> None:
        self.checkpoint_s = seconds  # the latest write: the filesystem's speed now

    def observe_evaluation(self, seconds: float) -> None:
        self.evaluation_s = seconds  # the latest snapshot scoring

    def evaluation_fits(self, estimate_s: float) -> bool:
        """Whether scoring a snapshot now (the last measured duration, else ``estimate_s``) still leaves the lead
        before the job's end. When it does not, the trainer stops with a checkpoint and the next job scores the
        snapshot first, instead of being killed half-way through the scoring."""
        end = self.job_end()
        return end is None or self.clock() + (self.evaluation_s or estimate_s) + self.lead < end

    @property
    def lead(self) -> float:
        if self.explicit_lead is not None:
            return self.explicit_lead
        return auto_lead(self.checkpoint_s or self.estimated_checkpoint_s, self.iteration_s)

    def job_end(self) -> float | None:
        """The unix time at which the scheduler ends this job, or None without a time limit."""
        if self._fixed_deadline is not None:
            return self._fixed_deadline
        if not self.job_id:
            return None
        now = self.clock()
        if now - self._queried >= REQUERY_S:
            self._queried = now
            self._end = self._end_time(self.job_id) or self._end
        return self._end

    def deadline(self) -> float | None:
        """The unix time by which this invocation stops (job end minus lead), or None without a time limit."""
        end = self.job_end()
        return None if end is None else end - self.lead

    def check_time_left(self) -> None:
        """Refuse a job whose remaining time cannot hold even one checkpoint write after loading (it would be
        requeued forever without progress)."""
        deadline = self.deadline()
        if deadline is not None and deadline <= self.clock():
            raise LeadTooShortError(
                f"the job's time limit leaves no time to train: it ends in {deadline + self.lead - self.clock():.0f} s "
                f"after loading, and stopping needs a lead of {self.lead:.0f} s (checkpoint write "
                f"{self.checkpoint_s or self.estimated_checkpoint_s:.0f} s); ask for a longer runtime")

    def reason(self) -> str:
        """Why this invocation should stop now ("" to go on)."""
        if self._signal:
            return f"signal {self._signal}"
        stop_file = self.run_dir / STOP_FILE
        if self.job_id or self._fixed_deadline is not None:
            deadline = self.deadline()
            if deadline is not None and self.clock() >= deadline:
                return "time limit"
        if stop_file.exists():
            with contextlib.suppress(FileNotFoundError):
                stop_file.unlink()
            return "stop file"
        return ""
