"""The agent service: mTLS server, allowlist, execution, trust files."""
