"""durafsd: the durafs service (supervisor, scheduler, udev watcher, media requests)."""
