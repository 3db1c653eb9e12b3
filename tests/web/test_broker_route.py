"""The broker's routing of a job's channel to a Redis Cluster shard, on its own (a stand-in
for the cluster's slot map: the real Cluster's failovers are in tests/cluster/)."""

from __future__ import annotations

from types import SimpleNamespace

import fakeredis

from jobcast.core.keys import channel
from jobcast.web.broker import Broker, JobSubscription


def test_a_channel_owned_by_a_primary_without_a_shard_makes_the_broker_reread_the_slot_map():
    """A review's finding: slots moved to a new node (or a failed primary back as a replica),
    with no watched channel among them, so no unsubscribe from the server said so. A job whose
    channel was then on the new primary found no shard, was put back to wait for one, and
    waited forever: its viewers were refused (503) on every try."""
    broker = Broker(fakeredis.FakeRedis())
    broker.cluster, broker._refresh_needed = True, False
    new_primary = SimpleNamespace(name="10.0.0.9:7000")
    broker.redis = SimpleNamespace(nodes_manager=SimpleNamespace(
        get_node_from_slot=lambda slot: new_primary))
    sub = JobSubscription("job-1", channel("job-1", tagged=True))
    assert broker._route(sub) is None
    assert broker._refresh_needed  # the next round re-reads the map, and adds that shard
