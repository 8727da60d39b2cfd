"""Grid runs as submitit jobs: here (``--launcher submitit-local``) or on Slurm (``--launcher slurm``).

    rlmin repro run --grid full --out runs/full --launcher slurm --partition gpu --time 240 \\
        --gpus-per-run 1 --cpus-per-run 4 --mem-gb 16 --array-parallelism 40
    rlmin repro run --grid small --out runs/try --launcher submitit-local --workers 2

Each run is one job (on Slurm, one task of a job array, or one job each with ``--no-array``). The
job runs the run's own ``rlmin train`` command (``Run.argv()``, what ``--launcher local`` runs)
as a child process, with its output appended to ``<run_dir>/train.log``, so a run's folder,
command.txt, train.log and results.json are the same whichever launcher ran it. submitit's
pickles and job logs go to ``<out>/.submitit/``.

Preemption and time limits (submitit's checkpointing protocol): the job is a
``submitit.helpers.Checkpointable``. Slurm sends the job USR2 ``SIGNAL_DELAY_S`` before its time
limit (``#SBATCH --signal``), and submitit then calls :meth:`TrainJob.checkpoint`: it sends the
trainer SIGTERM (the trainer finishes its step, saves a checkpoint and exits 143; see
rlmin/interrupts.py), waits for it, and returns a fresh job that submitit requeues. The requeued
job runs ``Run.argv()`` again, which is ``rlmin train --resume RUN_DIR`` once a checkpoint exists:
a resumed run ends with the same parameters as an uninterrupted one. The local executor sends the
same USR2 and restarts the job the same way. A run killed outright (no signal first) resumes from
its last periodic checkpoint at the next ``rlmin repro run``.

The driver waits for submitit-local jobs (``--workers`` at a time). On Slurm it submits and
returns (``rlmin repro status OUT`` follows the runs), or waits with ``--wait``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from submitit.helpers import Checkpointable, DelayedSubmission

from rlmin.errors import ReproError
from rlmin.gridrun import (
    LOG_FILE,
    SUBMITIT_DIR,
    GridOutcome,
    Run,
    available_cores,
    begin_attempt,
    claim_attempt,
    finish_attempt,
    prepare_datasets,
    report_attempt,
    triage,
)

# Between Slurm's USR2 and its kill: the trainer finishes the step (or the evaluation) under way,
# then saves. DT's protocol evaluates 100 episodes per target, which can take a minute or two.
SIGNAL_DELAY_S = 180
# Timeouts a run may be requeued after (submitit's max_num_timeout; preemptions do not count).
MAX_REQUEUES = 10
LOCAL_TIME_MIN = 60 * 24 * 365  # the local executor's time limit: none to speak of
POLL_S = 1.0
# sbatch options that submitit or the flags above own: --sbatch may not set them.
OWNED_SBATCH = {"array": "submitit sets it from the runs (--array-parallelism caps it)",
                "output": "submitit's logs go to OUT/.submitit", "error": "submitit's logs go "
                "to OUT/.submitit", "open-mode": "submitit appends to its logs",
                "signal": "the pre-timeout signal is what saves and requeues a run",
                "time": "use --time", "partition": "use --partition",
                "cpus-per-task": "use --cpus-per-run", "gpus-per-node": "use --gpus-per-run",
                "mem": "use --mem-gb"}


# ============================================================================ Slurm resources
@dataclass(frozen=True)
class SlurmResources:
    """What each run's job asks Slurm for; from the grid file's ``slurm:`` and the flags."""

    time: int  # minutes
    partition: str | None = None
    cpus_per_run: int | None = None
    gpus_per_run: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None
    sbatch: dict = field(default_factory=dict)

    def executor_parameters(self, label: str) -> dict:
        """``SlurmExecutor.update_parameters`` keywords."""
        params = {"job_name": f"rlmin-{label}", "time": self.time,
                  "signal_delay_s": SIGNAL_DELAY_S}
        if self.partition:
            params["partition"] = self.partition
        if self.cpus_per_run:
            params["cpus_per_task"] = self.cpus_per_run
        if self.gpus_per_run:
            params["gpus_per_node"] = self.gpus_per_run  # one task per job: its node's GPUs
        if self.mem_gb:
            params["mem"] = (f"{int(self.mem_gb)}GB" if self.mem_gb == int(self.mem_gb)
                             else f"{int(self.mem_gb * 1024)}MB")
        if self.array_parallelism:
            params["array_parallelism"] = self.array_parallelism
        if self.sbatch:
            params["additional_parameters"] = dict(self.sbatch)
        return params

    def describe(self) -> str:
        parts = [f"time {self.time} min", f"partition {self.partition or '(default)'}"]
        parts += [f"{n:g} {what}" for n, what in ((self.cpus_per_run, "CPUs"),
                                                 (self.gpus_per_run, "GPUs"),
                                                 (self.mem_gb, "GB memory")) if n]
        parts += [f"--{k}={v}" for k, v in self.sbatch.items()]
        return ", ".join(parts)


def _whole(value, where: str, minimum: int) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < minimum:
        raise ReproError(f"{where} takes a whole number >= {minimum}, got {value!r}")
    return int(text)


def _sbatch_options(items: Mapping, where: str) -> dict:
    out = {}
    for key, value in items.items():
        name = str(key).strip().lstrip("-").replace("_", "-")
        if not name or not all(c.isalnum() or c == "-" for c in name):
            raise ReproError(f"{where}: {key!r} is not an sbatch option name")
        if name in OWNED_SBATCH:
            raise ReproError(f"{where}: --{name} is not yours to set here ({OWNED_SBATCH[name]})")
        out[name] = value
    return out


def slurm_resources(section: Mapping, args) -> SlurmResources:
    """The grid file's ``slurm:`` mapping with the command line's flags over it."""
    merged = dict(section or {})
    flags = {}
    for key in ("partition", "time", "cpus_per_run", "gpus_per_run", "mem_gb",
                "array_parallelism"):
        value = getattr(args, key, None)
        if value is not None:
            merged[key], flags[key] = value, True

    def where(key: str) -> str:
        return f"--{key.replace('_', '-')}" if key in flags else f"the grid's slurm.{key}"

    if merged.get("time") is None:
        raise ReproError("--launcher slurm needs a time limit per run: --time MINUTES (or "
                         "slurm: {time: MINUTES} in the grid file); a run that needs longer is "
                         "requeued from its checkpoint")
    sbatch = section.get("sbatch") or {}
    if not isinstance(sbatch, Mapping):
        raise ReproError("the grid's slurm.sbatch must be a mapping {option: value}")
    sbatch = _sbatch_options(sbatch, "the grid's slurm.sbatch")
    for item in getattr(args, "sbatch", None) or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ReproError(f"--sbatch takes KEY=VALUE (e.g. --sbatch account=myproj), got {item!r}")
        sbatch.update(_sbatch_options({key: value}, f"--sbatch {item}"))
    mem = merged.get("mem_gb")
    if mem is not None:
        try:
            mem = float(mem)
        except (TypeError, ValueError):
            mem = -1.0
        if not mem > 0:
            raise ReproError(f"{where('mem_gb')} takes a number of GB > 0, got {merged['mem_gb']!r}")
    partition = merged.get("partition")
    if partition is not None and not str(partition).strip():
        raise ReproError(f"{where('partition')} is empty")
    return SlurmResources(
        time=_whole(merged["time"], where("time"), 1),
        partition=str(partition).strip() if partition is not None else None,
        cpus_per_run=(_whole(merged["cpus_per_run"], where("cpus_per_run"), 1)
                      if merged.get("cpus_per_run") is not None else None),
        gpus_per_run=(_whole(merged["gpus_per_run"], where("gpus_per_run"), 0)
                      if merged.get("gpus_per_run") is not None else None),
        mem_gb=mem,
        array_parallelism=(_whole(merged["array_parallelism"], where("array_parallelism"), 1)
                           if merged.get("array_parallelism") is not None else None),
        sbatch=sbatch)


def check_slurm_commands() -> None:
    """submitit submits with sbatch, starts each job with srun and follows jobs with sacct."""
    missing = [c for c in ("sbatch", "srun", "sacct") if shutil.which(c) is None]
    if missing:
        raise ReproError(f"--launcher slurm: no {', '.join(missing)} on PATH; run this on a Slurm "
                         "login node (or try the grid here with --launcher submitit-local)")


# ============================================================================ the job
def _preemption_signal() -> int:
    from submitit import JobEnvironment

    return getattr(signal, "SIG" + JobEnvironment.USR_SIG, signal.SIGUSR2)


class TrainJob(Checkpointable):
    """One run as a submitit job: runs ``run.argv()`` as a child process and waits for it."""

    def __init__(self, run: Run, num_threads: int | None = None,
                 env: Mapping[str, str | None] | None = None, cwd: str | None = None):
        self.run, self.num_threads = run, num_threads
        self.env = dict(env or {})  # set (or, for None, unset) in the child's environment
        self.cwd = cwd or os.getcwd()  # run dirs and config paths may be relative to it
        self._pid: int | None = None
        self._code: int | None = None

    def __call__(self) -> str:
        """The attempt's end: "finished", "interrupted", "failed" or "running elsewhere"."""
        run = self.run
        os.chdir(self.cwd)
        with claim_attempt(run) as taken:  # held until the trainer exits
            if taken == "finished elsewhere":  # e.g. a requeue after the run had just written its results
                return "finished"
            if taken:
                return taken
            return self._attempt(run)

    def _attempt(self, run: Run) -> str:
        argv = run.argv(num_threads=self.num_threads)  # --resume once a checkpoint exists
        begin_attempt(run, argv)
        env = {**os.environ}
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        preempt = _preemption_signal()

        def ignore_preemption_signal():
            # Slurm signals every process of the job step, the trainer too, and USR2's default
            # action is to terminate: the trainer ignores it; the job answers it with SIGTERM.
            signal.signal(preempt, signal.SIG_IGN)

        with open(run.run_dir / LOG_FILE, "a") as log:
            child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=ignore_preemption_signal)
        self._pid = child.pid
        try:
            code = self._reap()
        except KeyboardInterrupt:  # Ctrl-C, or the local executor cancelling the job
            self._stop_child()
            raise
        child.returncode = code  # reaped by _reap, not by Popen
        return finish_attempt(run, code)

    def checkpoint(self, *args, **kwargs):
        """submitit's pre-timeout / preemption hook: the trainer saves and stops, then the same
        run is requeued (it resumes from the checkpoint just saved)."""
        self._stop_child()
        return DelayedSubmission(TrainJob(self.run, self.num_threads, self.env, self.cwd))

    def _stop_child(self) -> None:
        if self._pid is None or self._code is not None:
            return
        try:
            os.kill(self._pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self._reap()

    def _reap(self) -> int:
        """Wait for the child; its exit code (negative: the signal that killed it).

        os.waitpid, not Popen.wait: checkpoint() runs in a signal handler that interrupts
        __call__'s own wait, and Popen.wait's lock (not re-entrant) would deadlock there."""
        if self._code is None:
            try:
                _, status = os.waitpid(self._pid, 0)
            except ChildProcessError:  # the other wait reaped it (and keeps what it saw)
                return -1 if self._code is None else self._code
            self._code = os.waitstatus_to_exitcode(status)
        return self._code


# ============================================================================ launching
def _executor(launcher: str, folder: Path, resources: SlurmResources | None, label: str):
    import submitit

    if launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=MAX_REQUEUES)
        executor.update_parameters(timeout_min=LOCAL_TIME_MIN, signal_delay_s=SIGNAL_DELAY_S)
        return executor
    executor = submitit.SlurmExecutor(folder, max_num_timeout=MAX_REQUEUES)
    try:
        executor.update_parameters(**resources.executor_parameters(label))
    except ValueError as e:
        raise ReproError(f"submitit refused the Slurm parameters: {str(e).splitlines()[0]}") from None
    return executor


def _submit(executor, jobs: Sequence[TrainJob], array: bool) -> list:
    try:
        if not array or len(jobs) == 1:
            return [executor.submit(job) for job in jobs]
        with executor.batch():  # one sbatch: a job array
            handles = [executor.submit(job) for job in jobs]
        return handles
    except ReproError:
        raise
    except Exception as e:  # sbatch said no: a bad partition, account, limit, ...
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise ReproError(f"submission failed: {lines[-1] if lines else type(e).__name__}") from None


def _job_error(job) -> str | None:
    """The last line of the job's own error, when submitit recorded one."""
    if not job.paths.result_pickle.exists():
        return None
    error = job.exception()
    if error is None:
        return None
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip() and not ln.startswith("-")]
    trace = [ln for ln in lines if not ln.startswith(("You can check", "or at paths", "- /"))]
    return trace[-1] if trace else type(error).__name__


def _collect(run: Run, job, outcome: GridOutcome, prefix: str, echo) -> None:
    state = None
    if job.paths.result_pickle.exists() and job.exception() is None:
        state = job.result()
    if state is None:  # the job ended without a word of its own: read the run's folder
        error = _job_error(job)
        if run.finished:
            state = "finished"
        elif error is not None:  # the job itself failed (e.g. no rlmin on the node)
            state = finish_attempt(run, -1, f"submitit job: {error} (log: {job.paths.stderr})")
        else:
            state = "failed" if run.failure() is not None else "interrupted"
    code = (run.failure() or {}).get("exit_code") if state == "failed" else None
    report_attempt(outcome, run, state, code, prefix, echo)


def launch(runs: Sequence[Run], out: Path, launcher: str, *, workers: int = 1,
           cores: int | None = None, resources: SlurmResources | None = None,
           skip_failed: bool = True, array: bool = True, wait: bool = True, label: str = "grid",
           echo: Callable[[str], None] = print) -> GridOutcome:
    """Run the unfinished runs as submitit jobs (``launcher``: submitit-local or slurm)."""
    sorted_runs = triage(runs, skip_failed, echo)
    todo = sorted_runs.todo
    outcome = GridOutcome(list(runs), skipped=sorted_runs.finished,
                          left_failed=sorted_runs.failed, running=sorted_runs.running)
    folder = Path(out) / SUBMITIT_DIR
    if launcher == "slurm":
        threads, env, at_once = resources.cpus_per_run, {}, len(todo)
        how = f"as Slurm jobs ({resources.describe()})"
    else:
        workers = max(1, int(workers))
        threads, at_once = max(1, (cores or available_cores()) // workers), workers
        # The local executor hides every GPU (CUDA_VISIBLE_DEVICES=""): give the run this
        # shell's view back, as --launcher local does.
        env = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
        how = f"as local submitit jobs, {workers} at a time, train.num_threads={threads}"
    echo(f"{len(runs)} runs: {sorted_runs.summary()}, {how}; submitit's logs: {folder}")
    if not todo:
        return outcome
    if at_once > 1:  # as --launcher local does; on Slurm, here on the submitting machine
        prepare_datasets(todo, echo=echo)
    executor = _executor(launcher, folder, resources, label)

    def job_for(run: Run) -> TrainJob:
        return TrainJob(run, threads, env)

    queue, live, ended = list(todo), [], 0
    if launcher == "slurm":
        live = list(zip(todo, _submit(executor, [job_for(r) for r in todo], array)))
        queue = []
        first = live[0][1].job_id
        kind = (f"job array {first.split('_')[0]}" if array and len(live) > 1
                else f"{len(live)} job(s) from {first}")
        echo(f"submitted {len(live)} run(s) to Slurm as {kind}")
        if not wait:
            outcome.submitted = list(todo)
            echo(f"follow them with `rlmin repro status {out}` (or squeue); when they are done, "
                 f"`rlmin repro report {out}`. Once none of these jobs is queued or running, the "
                 "same `repro run` command resumes what was interrupted")
            return outcome
    try:
        while queue or live:
            while queue and len(live) < at_once:
                run = queue.pop(0)
                live.append((run, _submit(executor, [job_for(run)], array=False)[0]))
                echo(f"[{ended + len(live)}/{len(todo)}] start {run.name}  "
                     f"(log: {run.run_dir / LOG_FILE})")
            for item in [item for item in live if item[1].done()]:
                live.remove(item)
                ended += 1
                _collect(item[0], item[1], outcome, f"[{ended}/{len(todo)}]", echo)
            if queue or live:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        if launcher == "slurm":
            echo(f"stopped waiting; the jobs go on on Slurm: `rlmin repro status {out}`")
        else:
            for _, job in live:
                job.cancel(check=False)  # the job tells its trainer to save and stop
            echo("interrupted: the running runs save a checkpoint and stop; the same command "
                 "resumes them")
        raise
    return outcome
