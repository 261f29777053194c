"""The attack benchmark of issue 18: can one hostile client stop gloomd or make it huge?

    python -m benchmarks.attacks                       # every attack, full size (about 2 min)
    python -m benchmarks.attacks --quick               # small sizes (about 40 s)
    python -m benchmarks.attacks stats-flood crash-timeout-bomb   # some attacks by name
    python -m benchmarks.attacks --list                # names and what each does
    python -m benchmarks.attacks --quick --out runs.jsonl         # also one JSON line each

Every attack gets a gloomd of its own (``python -m gloomd`` on 127.0.0.1, ports
chosen by the kernel) started with the flags the attack needs.  Beside it a
well-behaved master and slave (`benchmarks.attack_probe`, a separate process)
time a round trip (submit -> job -> respond -> result) every 100 ms throughout.
The attack sets up what it needs, marks its start (the memory baseline), does
its harm, and stops by itself: every attack is bounded in count and in time.
Then the table says, per attack:

* **up**: the daemon is still running (else its exit status and the last
  exception line of its log);
* **rt worst / p99**: the probe's round trips in flight at any time from the
  attack's start to half a second after its end (a round trip that failed or
  was still in flight when the probe stopped counts, with the time it had taken);
* **RSS**: the daemon's peak resident size during the attack (the kernel's
  VmHWM, reset at the attack's start), or, for attacks about memory that is
  *kept*, its resident size half a second after the attack ended;
* **bound**: what the configured caps allow (`rss_bound`), and the target
  RSS < 2 x bound;
* **fds**: the daemon's open descriptors at the end;
* **checks**: the attack's own targets (descriptors, keepalive, log volume...).

Verdict PASS when the daemon is up, every round trip took < 250 ms, the RSS
is under 2 x bound, and every check holds.  The harness survives a daemon that
dies: that is a row with ``up = no``, not an error.

Caps that only exist once issue 18 is fixed (`FLAGS`: byte caps on ids,
types and stores, a write timeout, websocket caps) are passed only when this
checkout's ``gloomd --help`` lists them; the bound is computed from the values
the attack asks for either way, and the row notes which flags were not
understood.

Where things are: `attack_catalog` (the attacks), `attack_limits` (caps, the
bound, the targets), `attack_kit` (the daemon, /proc, sockets, a websocket
client), `attack_probe` (the well-behaved client); this module runs them and
prints the table.  `tests/test_attacks.py` asserts the targets on the quick
sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from .attack_catalog import ATTACKS, JOBS, TOKEN, Attack, Check, Ctx
from .attack_kit import ROOT, Daemon, Sampler, count_fds, start_daemon, supported_flags
from .attack_limits import FLAGS, PROBE_CONNS, RSS_FACTOR, RT_TARGET, Caps, KiB, rss_bound

__all__ = ["ATTACKS", "Attack", "Caps", "Ctx", "Result", "main", "rss_bound", "run_attack", "table"]

#: Round trips after the attack's end that still count (a stall that outlasts it).
TAIL = 0.5


@dataclass
class Result:
    name: str
    summary: str
    quick: bool
    up: bool
    exit_status: int | None
    cause: str
    rt_worst_ms: float | None
    rt_p99_ms: float | None
    rt_samples: int
    rt_failed: int
    rt_errors: dict[str, int]
    baseline_mb: float
    peak_mb: float
    end_mb: float
    judged: str
    judged_mb: float
    bound_mb: float
    fds_start: int
    fds_end: int
    threads_peak: int
    checks: list[Check]
    notes: list[str]
    measured: dict[str, Any]
    flags: list[str]
    unsupported: list[str]
    error: str
    elapsed_s: float

    @property
    def rt_ok(self) -> bool:
        return (
            self.rt_worst_ms is not None
            and self.rt_failed == 0
            and self.rt_worst_ms < RT_TARGET * 1000
        )

    @property
    def rss_ok(self) -> bool:
        return self.judged_mb < RSS_FACTOR * self.bound_mb

    @property
    def passed(self) -> bool:
        return (
            self.up
            and self.rt_ok
            and self.rss_ok
            and all(c.ok for c in self.checks)
            and not self.error
        )

    def failures(self) -> list[str]:
        """Which targets were missed, in words (for test messages)."""
        missed = []
        if not self.up:
            missed.append(f"daemon down (exit {self.exit_status}: {self.cause})")
        if not self.rt_ok:
            missed.append(f"round trip worst {self.rt_worst_ms} ms, failed: {self.rt_errors or 0}")
        if not self.rss_ok:
            missed.append(
                f"RSS {self.judged} {self.judged_mb:.0f} MB >= 2 x bound {self.bound_mb:.0f} MB"
            )
        missed += [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]
        if self.error:
            missed.append(f"harness error: {self.error}")
        return missed

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(rt_ok=self.rt_ok, rss_ok=self.rss_ok, verdict="PASS" if self.passed else "FAIL")
        return out


class Probe:
    """The `attack_probe` process and the round trips it reports.

    A thread reads its lines as they come: a pipe left unread would fill
    and stall the probe, which would then measure nothing.
    """

    def __init__(self, daemon: Daemon, token: str | None) -> None:
        argv = [
            sys.executable,
            "-m",
            "benchmarks.attack_probe",
            str(daemon.master_port),
            str(daemon.slave_port),
        ]
        if token is not None:
            argv += ["--token", token]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=ROOT)
        self.samples: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True, name="probe-reader")
        self._reader.start()
        if not self._ready.wait(10):
            self.proc.kill()
            self.finish()
            raise RuntimeError("the probe did not connect to the daemon")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                sample = json.loads(line)
            except ValueError:
                continue
            if sample.get("ready"):
                self._ready.set()
            elif "rt" in sample:
                self.samples.append(sample)

    def finish(self) -> list[dict[str, Any]]:
        """Stop the probe; every round trip it reported (the one in flight included)."""
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.samples


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _write_jobs(directory: str) -> None:
    os.makedirs(directory)
    for name, text in JOBS.items():
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)


def _raise_fd_limit() -> None:
    """The floods hold thousands of sockets (5,000 refused peers, 1,010 websockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_attack(spec: Attack, *, quick: bool = False, budget: float | None = None) -> Result:
    """Run one attack against a daemon of its own; never raises for what the daemon does."""
    _raise_fd_limit()
    size = dict(spec.quick if quick else spec.full)
    asked = {**spec.caps, **(spec.quick_caps if quick else {})}
    caps = dataclasses.replace(Caps(), **asked)
    known = supported_flags()
    flags: list[str] = []
    unsupported: list[str] = []
    for name, value in asked.items():
        flag = FLAGS[name]
        (flags if flag in known else unsupported).extend(
            [f"{flag}={value:g}" if isinstance(value, float) else f"{flag}={value}"]
        )
    token = TOKEN if spec.token else None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"attack-{spec.name}-") as work:
        if token is not None:
            with open(os.path.join(work, "token"), "w") as f:
                f.write(token + "\n")
            flags.append(f"--token-file={os.path.join(work, 'token')}")
        if spec.ws:
            _write_jobs(os.path.join(work, "jobs"))
            flags += ["--ws-port=0", f"--jobs-dir={os.path.join(work, 'jobs')}"]
        daemon = start_daemon(flags, os.path.join(work, "gloomd.log"), nofile=spec.nofile)
        sampler = Sampler(daemon.pid)
        sampler.start()
        fds_start = count_fds(daemon.pid)
        probe: Probe | None = None
        ctx = Ctx(
            daemon,
            sampler,
            caps,
            size,
            token,
            work,
            deadline=time.monotonic() + (budget or (20.0 if quick else 90.0)),
        )
        error = ""
        try:
            probe = Probe(daemon, token)
            spec.body(ctx)
        except (OSError, EOFError) as exc:
            # The daemon closed, reset or stopped reading the attacker's connection
            # (a defence, or its death: `up` says which); checks it cut short fail below.
            ctx.note(f"the attack ended early: {type(exc).__name__}: {exc}"[:200])
        except Exception as exc:
            # The daemon's doing (a reset, an EOF when it died) or the harness's:
            # either way a row of the table, not the end of the run.
            error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            ctx.close_all()
        recorded = {check.name for check in ctx.checks}
        for name in spec.expects:
            if name not in recorded:
                ctx.check(name, False, "not measured: the attack ended before it")
        if ctx.begun is None:
            ctx.begin()
        ended = time.monotonic()
        time.sleep(TAIL)
        sampler.sample()
        end_kb = sampler.rss_kb
        fds_end = count_fds(daemon.pid)
        samples = probe.finish() if probe is not None else []
        sampler.finish()
        up = daemon.alive()
        status = None if up else daemon.proc.returncode
        cause = "" if up else daemon.cause()
        daemon.stop()
    if not up and error:
        error = ""  # the attack's socket errors are the daemon dying, already reported
    # Every round trip in flight at some point of the attack (or its tail).
    window = [s for s in samples if s["t"] + s["rt"] >= ctx.begun and s["t"] <= ended + TAIL]
    every = [s["rt"] for s in window]
    # A round trip cut short by stopping the probe failed only if it was already late;
    # otherwise it just happened to be in flight (its time still counts in the worst).
    failed = [
        s for s in window if not s["ok"] and (s.get("error") != "inflight" or s["rt"] >= RT_TARGET)
    ]
    errors: dict[str, int] = {}
    for sample in failed:
        errors[sample["error"]] = errors.get(sample["error"], 0) + 1
    bound = rss_bound(
        caps,
        ctx.baseline_kb * KiB,
        conns=ctx.conns + PROBE_CONNS,
        ws_conns=ctx.ws_conns,
        ws_jobs=ctx.ws_jobs,
        stores=ctx.stores,
    )
    peak_kb = sampler.hwm_kb
    judged_kb = end_kb if spec.judge == "end" else peak_kb
    if not up:
        ctx.note("daemon exited: " + (cause or "no exception in its log"))
    return Result(
        name=spec.name,
        summary=spec.summary,
        quick=quick,
        up=up,
        exit_status=status,
        cause=cause,
        rt_worst_ms=round(max(every) * 1000, 1) if every else None,
        rt_p99_ms=round(_percentile(every, 0.99) * 1000, 1) if every else None,
        rt_samples=len(every),
        rt_failed=len(failed),
        rt_errors=errors,
        baseline_mb=round(ctx.baseline_kb * KiB / 1e6, 1),
        peak_mb=round(peak_kb * KiB / 1e6, 1),
        end_mb=round(end_kb * KiB / 1e6, 1),
        judged=spec.judge,
        judged_mb=round(judged_kb * KiB / 1e6, 1),
        bound_mb=round(bound / 1e6, 1),
        fds_start=fds_start,
        fds_end=fds_end,
        threads_peak=sampler.max_threads,
        checks=ctx.checks,
        notes=ctx.notes,
        measured=ctx.measured,
        flags=flags,
        unsupported=unsupported,
        error=error,
        elapsed_s=round(time.monotonic() - started, 1),
    )


# --------------------------------------------------------------------------- the table


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def table(results: list[Result]) -> str:
    head = [
        "attack",
        "up",
        "rt worst ms",
        "rt p99 ms",
        "peak RSS MB",
        "judged RSS MB / 2x bound",
        "fds end",
        "checks",
        "verdict",
    ]
    rows = [head, ["---"] * len(head)]
    for r in results:
        up = "yes" if r.up else f"**no** (exit {r.exit_status})"
        rt = _ms(r.rt_worst_ms)
        if r.rt_failed:
            rt += f" ({r.rt_failed} failed)"
        p99 = _ms(r.rt_p99_ms)
        judged = f"{r.judged_mb:,.0f} {r.judged} / {RSS_FACTOR * r.bound_mb:,.0f}"
        checks = "; ".join(f"{'ok' if c.ok else 'FAIL'} {c.name}" for c in r.checks) or "-"
        fds = str(r.fds_end) if r.up else "-"
        rows.append(
            [
                r.name,
                up,
                rt,
                p99,
                f"{r.peak_mb:,.0f}",
                judged,
                fds,
                checks,
                "PASS" if r.passed else "FAIL",
            ]
        )
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    notes = []
    for r in results:
        said = [*r.notes, *(f"{c.name}: {c.detail}" for c in r.checks)]
        if r.unsupported:
            said.append("not understood by this gloomd: " + " ".join(r.unsupported))
        if r.error:
            said.append(f"harness: {r.error}")
        notes.append(
            f"* **{r.name}** ({r.summary}; baseline {r.baseline_mb:.0f} MB, {r.elapsed_s:.0f} s): "
            + "; ".join(said)
        )
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def _revision() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=10,
        )
        return done.stdout.strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("names", nargs="*", help="attacks to run (default: all); see --list")
    p.add_argument("--quick", action="store_true", help="the small sizes the tests use")
    p.add_argument("--out", help="append one JSON line per attack to this file")
    p.add_argument("--list", action="store_true", help="list the attacks and exit")
    args = p.parse_args(argv)
    if args.list:
        for spec in ATTACKS.values():
            print(f"{spec.name:24} {spec.summary}")
        return 0
    unknown = [n for n in args.names if n not in ATTACKS]
    if unknown:
        p.error(f"unknown attack(s): {', '.join(unknown)} (see --list)")
    chosen = [ATTACKS[n] for n in args.names] if args.names else list(ATTACKS.values())
    revision, when = _revision(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    machine = (
        f"{os.cpu_count()} cpu, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )
    results = []
    for spec in chosen:
        result = run_attack(spec, quick=args.quick)
        results.append(result)
        print(
            f"{spec.name}: {'PASS' if result.passed else 'FAIL'} in {result.elapsed_s:.0f} s"
            + ("" if result.passed else " - " + "; ".join(result.failures())),
            file=sys.stderr,
            flush=True,
        )
        if args.out:
            with open(args.out, "a") as f:
                line = {**result.as_json(), "revision": revision, "when": when, "machine": machine}
                f.write(json.dumps(line) + "\n")
    print(f"gloomd {revision}, {when}, {machine}{', --quick' if args.quick else ''}\n")
    print(table(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
