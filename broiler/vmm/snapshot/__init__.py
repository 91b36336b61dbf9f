"""Snapshot and restore (docs/snapshot.md, issue 18): a paused VM written to one file, and rebuilt from it."""
