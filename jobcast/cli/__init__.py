"""The ``jobcast`` command line, and the terminal client that follows jobs over HTTP."""
