"""The broker's reads of logs (jobcast.web.broker): a job's log and the job feed answer the
same calls, on the session's real Redis."""

from __future__ import annotations

import uuid

from jobcast.core.feed import FEED, Feed
from jobcast.core.joblog import JobLog
from jobcast.web.broker import Broker
from tests.support.services import own_database

DB = 15  # this module's own database: the job feed is one per database


def test_positions_of_jobs_and_the_feed_come_in_order_from_one_call(redis_server):
    with own_database(redis_server, DB) as (_url, redis):
        running, ended = JobLog(redis, uuid.uuid4().hex), JobLog(redis, uuid.uuid4().hex)
        for log in (running, ended):
            log.create("sqrt", {}, None)
            log.started("w", 1)
            log.value(0, 1.0)
        ended.finished()
        Feed(redis).append(running.job_id, "progress", 3, {"values": 1})
        gone = uuid.uuid4().hex

        positions = Broker(redis).positions([running.job_id, FEED, gone, ended.job_id])

        assert positions == [running.position(), Feed(redis).position(), None, ended.position()]
        assert positions[0].ended is False and positions[3].ended is True
        head = Feed(redis).head()  # the jobs' lifecycle went into the feed too
        assert head.seq > 1 and positions[1] == (False, head.seq, head.epoch)


def test_rebasing_the_feed_mints_a_new_epoch_once_and_a_gone_job_stays_gone(redis_server):
    with own_database(redis_server, DB) as (_url, redis):
        feed = Feed(redis)
        feed.append("job", "progress", 1, {"values": 1})
        broker = Broker(redis)
        seen = broker.head(FEED)

        minted = broker.rebase(FEED, seen)
        again = broker.rebase(FEED, seen)  # the compare fails: the first one's epoch stays

        assert minted.epoch != seen.epoch and again.epoch == minted.epoch
        assert broker.position(FEED) == (False, seen.seq, minted.epoch)
        gone = uuid.uuid4().hex
        assert not broker.rebase(gone, broker.head(gone)).exists
        assert not redis.exists(JobLog(redis, gone).keys.meta)
