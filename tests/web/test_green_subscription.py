"""Under gevent (gunicorn's worker) viewers get the lock-free GreenSubscription; same contract."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import time, gevent
    from web.hub import Hub, GreenSubscription, OVERFLOW, RESYNC, SHUTDOWN
    from jobcast.joblog import Entry

    class LocalHub(Hub):
        def start(self):
            pass

    hub = LocalHub(None, buffer_size=3)
    sub = hub.subscribe("a" * 32)
    assert isinstance(sub, GreenSubscription), type(sub)
    e = [Entry.parse('{"seq":%d,"kind":"value","ts":1.0,"i":%d,"v":"x","j":"x"}' % (k + 1, k))
         for k in range(5)]

    t = time.monotonic(); assert sub.get(0.05) == [] and time.monotonic() - t >= 0.04
    sub.put(e[0]); sub.put(e[1]); assert sub.get(5) == e[:2]           # ready: no wait
    got = []
    g = gevent.spawn(lambda: got.append(sub.get(5)))
    gevent.sleep(0.01); sub.put(e[2]); g.join(1)
    assert got == [[e[2]]], got                                         # woken by put
    for x in e[:4]:
        sub.put(x)
    assert sub.get(5) is OVERFLOW and sub.get(0.01) == []              # bounded
    sub.resync(); assert sub.get(5) is RESYNC
    g = gevent.spawn(lambda: got.append(sub.get(5)))
    gevent.sleep(0.01); hub.shutdown(); g.join(1)
    assert got[-1] is SHUTDOWN, got                                     # woken by shutdown
    sub.close(); assert hub.viewers() == 0
    print("ok")
""")


def test_green_subscription_keeps_the_subscription_contract():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
