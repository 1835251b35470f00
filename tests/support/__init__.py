"""Helpers shared by tests: tree generators and comparers."""
