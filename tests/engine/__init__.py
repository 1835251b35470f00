"""Tests of the engine: scan, fs metadata, backup, restore."""
