"""Reading volumes recorded in the index: media online checks, waits, open readers.

Shared by restore, verify and the FUSE tree. A volume on an offline medium either waits
(polling, telling *on_wait* what to bring online) or raises MediumOfflineError at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from durafs.engine.poolwriter import (
    describe_offline,
    describe_unavailable,
    open_medium,
    waiting_for,
)
from durafs.errors import CatalogError, FormatError, MediumOfflineError, VolumeMissingError
from durafs.format.keys import CatalogKeys
from durafs.format.reader import VolumeReader
from durafs.index.catalog import Catalog
from durafs.index.rows import LOST_VOLUME_PREFIX, MediumRow, VolumeRow
from durafs.media.base import Medium, VolumeHandle

log = logging.getLogger(__name__)
OPEN_VOLUMES = 16
POLL_SECONDS = 1.0


class WaitStopped(Exception):
    """A wait for a medium ended by `VolumeAccess.stop_waiting` (the run is being
    interrupted): not a failure of the medium, so nothing is reported as unreadable."""


class VolumeAccess:
    """Opens volumes by index row, caching up to OPEN_VOLUMES readers (thread-safe).

    *wait*: seconds to wait for an offline medium (None = forever, 0 = fail at once).
    """

    def __init__(
        self,
        catalog: Catalog,
        keys: CatalogKeys,
        *,
        wait: float | None = 0,
        on_wait: Callable[[str], None] = log.warning,
    ) -> None:
        self.catalog = catalog
        self.keys = keys
        self.wait = wait
        self.on_wait = on_wait
        self._lock = threading.Lock()
        self._open: OrderedDict[int, tuple[VolumeHandle, VolumeReader]] = OrderedDict()
        self._media: dict[int, MediumRow] = {m.id: m for m in catalog.media()}
        self._stopped = threading.Event()
        #: what the user was last told of each medium being waited for: threads waiting
        #: for the same medium (a restore's workers) tell it once between them
        self._told: dict[int, str] = {}

    def medium_row(self, medium_id: int) -> MediumRow:
        """The medium's row; all rows are read at once (a small table), again only when an
        unknown medium appears, so worker threads rarely touch the index."""
        with self._lock:
            row = self._media.get(medium_id)
            if row is None:
                self._media = {m.id: m for m in self.catalog.media()}
                row = self._media.get(medium_id)
        if row is None:
            raise CatalogError(f"the index names no medium {medium_id}")
        return row

    def online_medium(self, row: MediumRow) -> Medium:
        """The medium's driver once it is online (waiting per *wait*)."""
        deadline = None if self.wait is None else time.monotonic() + self.wait
        while True:
            medium = open_medium(row)
            status = medium.status()
            if status.online:
                with self._lock:
                    self._told.pop(row.id, None)  # a later wait for it is told again
                return medium
            if deadline is not None and time.monotonic() >= deadline:
                with self._lock:
                    self._told.pop(row.id, None)  # a later wait is told again
                raise MediumOfflineError(describe_unavailable(row, status))
            message = waiting_for(row, status)
            with self._lock:  # told again when what is at its place changes
                new = self._told.get(row.id) != message
                self._told[row.id] = message
            if new:
                self.on_wait(message)
            if self._stopped.wait(POLL_SECONDS):
                raise WaitStopped(describe_offline(row))

    def stop_waiting(self) -> None:
        """End every wait for a medium, now and later, with WaitStopped: a run being
        interrupted joins its worker threads, which may be waiting for ever."""
        self._stopped.set()

    def reader(self, volume: VolumeRow) -> VolumeReader:
        """An open reader for *volume* (cached)."""
        if volume.uuid.startswith(LOST_VOLUME_PREFIX):
            raise VolumeMissingError(
                "content on no medium when the index was rebuilt (durafs recover): lost, "
                "until a backup of a source that still has it stores it again")
        with self._lock:
            cached = self._open.get(volume.id)
            if cached is not None:
                self._open.move_to_end(volume.id)
                return cached[1]
        medium = self.online_medium(self.medium_row(volume.medium_id))
        handle = medium.open_volume(volume.name or "")
        try:
            reader = VolumeReader(handle.read_at, identities=self.keys.identities,
                                  size=handle.size, name=volume.name or volume.uuid,
                                  catalog_id=self.keys.catalog_id)
            if reader.header.volume_id != volume.uuid:
                # another volume's file in its place (copied over it, renamed): what it
                # holds is not what the index says is there, even where sizes agree
                raise FormatError(f"{volume.name or volume.uuid}: holds volume "
                                  f"{reader.header.volume_id}, not {volume.uuid}")
        except BaseException:
            handle.close()  # a damaged header: the descriptor is not kept open
            raise
        with self._lock:
            self._open[volume.id] = (handle, reader)
            while len(self._open) > OPEN_VOLUMES:
                old_handle, _ = self._open.popitem(last=False)[1]
                old_handle.close()
        return reader

    def close(self) -> None:
        with self._lock:
            for handle, _ in self._open.values():
                handle.close()
            self._open.clear()
