"""ctrl-exec: remote execution of allowlisted scripts over mutual TLS."""

__version__ = "0.1.0"
