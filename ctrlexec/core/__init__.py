"""Protocol logic with no I/O: pure functions on bytes, text and dicts."""
