"""Dispatcher services: registry, fan-out to agents, pairing listener, API."""
