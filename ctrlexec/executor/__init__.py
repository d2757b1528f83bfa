"""The optional privileged executor."""
