"""Media: the Medium interface (base) and its drivers (directory: local directories and disks).

Imports only durafs.errors and durafs.format; the engine calls everything here from worker
threads (all methods are synchronous).
"""
