"""The `longlive` command line: one entry point for the live server, the offline commands and
the tools (`python -m longlive ...` works the same on machines without the server's packages)."""
