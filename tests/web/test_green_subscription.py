"""Under gevent (gunicorn's own gevent worker) a queue viewer is drained by a greenlet: the
relay's write wakes it, its buffer is bounded, and a shutdown ends it; same contract."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import sys, time, uuid, gevent
    from redis import Redis
    from jobcast.core.joblog import JobLog
    from jobcast.web.admission import drain
    from jobcast.web.broker import Broker
    from jobcast.web.frames import TEXT
    from jobcast.web.relay import Relay
    from jobcast.web.viewer import QueueSink, Viewer, ViewerState

    class PlayedBroker(Broker):
        def subscribed(self, job_id):
            return True

    class RecordingSink(QueueSink):  # each send: (bytes offered, taken, buffered after it)
        def __init__(self, limit):
            super().__init__(limit)
            self.sends = []
        def send(self, data):
            n = super().send(data)
            self.sends.append((len(data), n, self._size))
            return n

    def wait(condition, what):
        deadline = time.monotonic() + 5
        while not condition():
            assert time.monotonic() < deadline, "timed out waiting for " + what
            gevent.sleep(0.01)

    redis = Redis.from_url(sys.argv[1])
    log = JobLog(redis, uuid.uuid4().hex)
    log.create("sqrt", {}, None); log.started("test", 1)
    relay = Relay(PlayedBroker(redis), heartbeat=5)
    assert relay.green                                                  # detected from gevent
    sink = RecordingSink(8)
    viewer = Viewer(log.job_id, sink, TEXT, cursor=0)
    body = drain(relay, viewer, b"")
    got = []
    reader = gevent.spawn(lambda: got.extend(body))
    wait(lambda: viewer.state is ViewerState.HELD and not viewer.slow,  # held, its history
         "the viewer's history")                                        # (nothing) read
    for i in range(3):
        log.value(i, "v%d" % i)
    relay.deliver(log.job_id, log.read(2, 10)[0])                       # 9 bytes to write
    wait(lambda: b"".join(got) == b"v0\\nv1\\nv2\\n", "the values")      # woken by the write, via
    assert any(n < offered for offered, n, _ in sink.sends), sink.sends # an 8-byte buffer: a
    assert max(size for _, _, size in sink.sends) <= 8, sink.sends      # send is cut short, and
    relay.shutdown(); reader.join(5)                                    # it never holds more
    assert reader.dead and relay.viewers() == 0                         # ended by shutdown
    print("ok")
""")


def test_a_queue_viewer_under_gevent_keeps_the_same_contract(redis_server):
    out = subprocess.run([sys.executable, "-c", SCRIPT, redis_server.url], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
