"""The foundation every service stands on: settings, the log store, the job log and the tasks.

Nothing here imports a service (``jobcast.producer``, ``jobcast.worker``, ``jobcast.web``),
the command line, Flask or gevent: ``lint-imports`` checks it (``pyproject.toml``).
"""
