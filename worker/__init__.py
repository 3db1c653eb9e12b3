"""Jobcast's worker side: tasks, the job log they write to, and the RQ worker."""
