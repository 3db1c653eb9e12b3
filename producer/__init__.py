"""Jobcast's producer side: the Python API and the `jobcast` command line."""

from producer.enqueue import enqueue

__all__ = ["enqueue"]
