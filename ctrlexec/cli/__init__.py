"""Command-line roles: argument parsing and output formatting only."""
