# Gunicorn settings for Jobcast's web process. `jobcast web` passes bind and workers.
# Streams are long-lived and idle most of the time, so each worker is a gevent loop that
# holds thousands of connections; nothing here may time out a healthy stream.
wsgi_app = "jobcast.web.app:create_app()"
# gunicorn's gevent worker, whose streams can hand their connection to the process's relay
# (web/handover.py): a held stream costs a socket and a small object, not a parked greenlet.
worker_class = "jobcast.web.handover.StreamWorker"
workers = 2
# Requests a worker serves at once. Held streams are not counted here (they have no
# greenlet); JOBCAST_STREAMS_PER_PROCESS caps those.
worker_connections = 10000
# For gevent workers this is the worker's heartbeat to the arbiter, not a request timeout.
timeout = 30
# On SIGTERM, streams get this long to finish before the worker exits.
graceful_timeout = 10
keepalive = 5
# The longest request line gunicorn reads (its maximum): /events names up to 100 jobs.
limit_request_line = 8190
# Connections the kernel queues before the worker accepts them. A restarted replica's viewers
# come back by the thousand, and each one dropped from a full queue retries its SYN a second or
# more later: 4096 dropped 3-8x fewer than 2048 in the reconnect storm (docs/benchmarks.md).
# Linux caps it at net.core.somaxconn (4096 by default since 5.4).
backlog = 4096
# No runtime control socket: it defaults to one path per user, shared by every instance.
control_socket_disable = True
errorlog = "-"
loglevel = "info"
