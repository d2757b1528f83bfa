"""Certificates: CA, keys and CSRs (cryptography, imported lazily), TLS contexts."""
