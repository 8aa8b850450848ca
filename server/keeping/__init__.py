"""Keeping: what the server holds on to, recordings on disk (the recorder) and the engine's
rewind points in memory (the rewind shelf)."""
