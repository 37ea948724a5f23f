"""Fake HTTP servers for tests (loopback only)."""
