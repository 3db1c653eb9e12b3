"""Jobcast's producer: put jobs on the queue (``enqueue``) and cancel them (``cancel``)."""
