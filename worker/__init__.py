"""Jobcast's worker: the RQ worker that runs tasks, and ``emit()`` for any RQ job."""
