"""Jobcast's web side: a Flask app that relays job logs to any number of viewers.

The app factory is :func:`jobcast.web.app.create_app`. This package imports nothing itself, so
gunicorn's arbiter, which imports the worker class (:mod:`jobcast.web.handover`) before its workers
apply gevent's patches, loads neither Flask nor redis-py.
"""
