"""Jobcast's fan-out benchmark, side by side with flask-sse. Run ``python -m bench.run``."""
