"""The supervisor behind `jobcast up`: its restart policy, its output, and what it does with
real (tiny) child processes."""

from __future__ import annotations

import io
import os
import re
import signal
import sys

import pytest

from jobcast.launcher.supervisor import (Printer, RestartPolicy, Service, ServiceFailed, Supervisor,
                                 describe_exit, has_exited, session_members)
from jobcast.launcher.up import HOUSEKEEPING
from tests.support.wait import wait_for


def test_restart_delays_double_up_to_a_cap_then_the_policy_gives_up():
    policy = RestartPolicy(retries=5, window=60, backoff=0.5, max_backoff=5)
    exits: list[float] = []
    delays = []
    for t in range(7):
        exits = policy.prune(exits, t) + [t]
        delays.append(policy.delay(exits))
    assert delays == [0.5, 1, 2, 4, 5, None, None]


def test_exits_older_than_the_window_no_longer_count():
    policy = RestartPolicy(retries=2, window=10)
    exits = policy.prune([0.0, 1.0], 11.5) + [11.5]
    assert exits == [11.5] and policy.delay(exits) == policy.backoff


def test_exit_statuses_are_described_in_words():
    assert describe_exit(1) == "exit status 1"
    assert describe_exit(-9) == "killed by SIGKILL"


def printed(color: bool | None = False, verbose: bool = False) -> tuple[Printer, io.StringIO]:
    out = io.StringIO()
    return Printer(out, color=color, quiet=HOUSEKEEPING, verbose=verbose), out


def test_lines_are_prefixed_with_time_and_name_and_lose_their_own_timestamp():
    printer, out = printed()
    printer.add("worker.2")
    printer.child_line("web.1", "[2026-11-24 08:25:55 +0000] [7688] [INFO] Listening at: x\n")
    printer.child_line("worker.2", "2026-11-24 08:25:55,594 rq.worker INFO *** Listening on jobcast...\n")
    printer.system("web:     http://127.0.0.1:8000/")
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d web\.1    \| \[7688\] \[INFO\] Listening at: x", lines[0])
    assert re.fullmatch(r"\d\d:\d\d:\d\d worker\.2 \| rq\.worker INFO \*\*\* Listening on jobcast\.\.\.",
                        lines[1])
    assert re.fullmatch(r"\d\d:\d\d:\d\d jobcast  \| web:     http://127\.0\.0\.1:8000/", lines[2])
    assert "\x1b[" not in out.getvalue()


def test_rq_housekeeping_lines_are_hidden_unless_verbose():
    line = "2026-11-24 08:26:10,660 rq.worker INFO Worker vm.7686: cleaning registries for queue: jobcast"
    for verbose, shown in ((False, 0), (True, 1)):
        printer, out = printed(verbose=verbose)
        printer.child_line("worker.1", line)
        printer.child_line("worker.1", "2026-11-24 08:26:10,662 rq.worker INFO Worker vm.7686: cleaning group registries")
        printer.child_line("worker.1", "rq.worker INFO Worker vm.7686: jobcast: jobcast sqrt (abc)")
        text = out.getvalue()
        assert text.count("cleaning registries") == shown and "jobcast sqrt" in text
        assert text.count("cleaning group registries") == shown


def test_each_service_gets_its_own_colour_on_a_terminal():
    printer, out = printed(color=True)
    for name in ("web.1", "worker.1", "worker.2"):
        printer.line(name, "hello")
    codes = [re.search(r"\x1b\[([\d;]+)m", line) for line in out.getvalue().splitlines()]
    assert all(codes) and len({c.group(1) for c in codes}) == 3


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


@pytest.fixture
def supervisor():
    printer, out = printed()
    sup = Supervisor(printer, RestartPolicy(retries=2, window=30, backoff=0.05, max_backoff=0.1))
    sup.out = out
    yield sup
    sup.stop(sup.services, timeout=5)


def test_a_service_that_fails_at_once_every_time_is_given_up_on_by_name(supervisor):
    supervisor.add(Service("fine.1", sh("exec sleep 30")))
    bad = supervisor.add(Service("bad.1", sh("echo broken; exit 3")))
    supervisor.start(supervisor.services)
    with pytest.raises(ServiceFailed, match=r"bad\.1 exited 3 times within 30s \(last: exit status 3\)") as exc:
        wait_for(lambda: supervisor.poll(), 10, what="the supervisor to give up")
    assert exc.value.service is bad and bad.state == "fatal" and bad.restarts == 2
    assert supervisor.services[0].alive() and supervisor.services[0].restarts == 0
    wait_for(lambda: len(re.findall(r"bad\.1 +\| broken", supervisor.out.getvalue())) == 3, 5,
             what="each run's output under the service's name")


def test_a_service_that_dies_once_is_restarted_and_what_it_left_running_is_killed(supervisor, tmp_path):
    flag = tmp_path / "crashed-once"
    # The first run leaves a background process in its session, prints its pid and crashes.
    svc = supervisor.add(Service("flaky.1", sh(
        f"if [ -e {flag} ]; then exec sleep 30; fi; touch {flag}; sleep 300 & echo left $!; exit 1")))
    supervisor.start([svc])
    first = svc.pid
    left = int(wait_for(lambda: re.search(r"left (\d+)", supervisor.out.getvalue()), 10).group(1))
    wait_for(lambda: (supervisor.poll(), svc.restarts == 1 and svc.alive())[1], 10,
             what="the restart")
    assert svc.pid != first and svc.state == "running"
    wait_for(lambda: left not in session_members(first), 5, what="the leftover to be killed")
    assert "flaky.1 exited (exit status 1); restarting in 0.05s" in supervisor.out.getvalue()


def test_stop_ends_every_process_in_each_services_session(supervisor):
    svc = supervisor.add(Service("tree.1", [sys.executable, "-c",
                                            "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"]))
    supervisor.start([svc])
    wait_for(lambda: len(session_members(svc.pid)) == 2, 10, what="the grandchild")
    supervisor.stop([svc], timeout=5)
    wait_for(lambda: session_members(svc.pid) == [], 5, what="the grandchild to be killed")
    assert svc.state == "stopped"


def test_a_dead_services_session_is_killed_while_its_exited_leader_still_holds_the_id(supervisor,
                                                                                       monkeypatch):
    """Reaped, a leader's pid (its session's id) may go to a new process, which killing the
    session by that id would then hit; a zombie keeps the id taken. Both the restart after a
    crash and the stop kill the session before reaping."""
    import jobcast.launcher.supervisor as module

    states = []
    kill = module.kill_session

    def watched(sid, *args):
        """Note the leader's state (Z: exited, not reaped) when its session is killed."""
        with open(f"/proc/{sid}/stat", "rb") as f:
            stat = f.read()
        states.append(stat[stat.rfind(b")") + 2:].split()[0])
        kill(sid, *args)

    monkeypatch.setattr(module, "kill_session", watched)
    svc = supervisor.add(Service("crashy.1", sh("sleep 300 & exit 1")))
    supervisor.start([svc])
    first = svc.pid
    wait_for(lambda: (supervisor.poll(), svc.restarts == 1)[1], 10, what="the restart")
    assert states == [b"Z"] and svc.pid != first and session_members(first) == []
    svc.stop_signals = (signal.SIGKILL,)
    supervisor.stop([svc], timeout=5)
    assert states == [b"Z", b"Z"] and svc.state == "stopped"


def test_stop_kills_what_a_leader_left_when_it_exits_just_before_its_stop_signal(supervisor):
    """A review's finding: the stop signal went through Popen.send_signal, which polls first
    and so reaps a leader that exited since alive() said it lived; reap() then took the
    session for dealt with, and what the leader left in it lived on."""
    svc = supervisor.add(Service("quick.1", sh("sleep 300 & echo left $!; exec sleep 300")))
    supervisor.start([svc])
    left = int(wait_for(lambda: re.search(r"left (\d+)", supervisor.out.getvalue()), 10).group(1))
    leader = svc.pid
    os.kill(leader, signal.SIGKILL)              # the leader exits ...
    wait_for(lambda: has_exited(svc.proc), 5, what="the leader to exit")
    svc.alive = lambda: True                     # ... just after alive() said it lived
    supervisor.stop([svc], timeout=5)
    del svc.alive
    assert svc.state == "stopped"
    wait_for(lambda: left not in session_members(leader), 5, what="what it left to be killed")


def test_stopping_a_service_that_waits_to_restart_kills_nothing_by_its_reaped_id(monkeypatch):
    """A review's finding: a service stopped while it waits out its backoff (or stopped
    twice) has a leader reaped already, whose id may belong to another process by now."""
    import jobcast.launcher.supervisor as module

    killed = []
    kill = module.kill_session
    monkeypatch.setattr(module, "kill_session", lambda sid, *a: (killed.append(sid), kill(sid, *a)))
    printer, _out = printed()
    sup = Supervisor(printer, RestartPolicy(retries=2, window=30, backoff=30, max_backoff=30))
    svc = sup.add(Service("down.1", sh("exit 1")))
    sup.start([svc])
    wait_for(lambda: (sup.poll(), svc.state == "backoff")[1], 10, what="the backoff")
    assert killed == [svc.pid]  # at its exit, while it was a zombie
    sup.stop([svc], timeout=5)
    sup.stop([svc], timeout=5)
    assert killed == [svc.pid] and svc.state == "stopped"


def test_a_services_output_reader_never_takes_a_stop_signal(supervisor):
    """A review's finding: the stop signals are blocked while a service is started, so that
    one never comes between the fork and the process being recorded; but the threads reading
    the services' output were started with them unblocked, the kernel could give them one,
    and the handler then ran in the main thread at once, inside the start (its process never
    recorded, never stopped in order). Those threads now keep them blocked."""
    import signal
    import threading

    svc = supervisor.add(Service("quiet.1", sh("exec sleep 30")))
    supervisor.start([svc])
    [reader] = [t for t in threading.enumerate() if t.name == "output-quiet.1"]
    with open(f"/proc/self/task/{reader.native_id}/status") as status:
        blocked = int(next(line for line in status if line.startswith("SigBlk:")).split()[1], 16)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        assert blocked & (1 << (sig - 1)), f"{sig.name} is not blocked in the output reader"
