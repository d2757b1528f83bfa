"""Configuration: default paths, the schema of every key, loading and editing."""
