"""The catalog directory: index, configuration and keys of one durafs installation.

Layout of ``$DURAFS_HOME`` (default ``/var/lib/durafs`` as root, else
``~/.local/share/durafs``)::

    config.json          catalog id, encryption mode, scrypt salt/work factor (no secrets)
    index.sqlite         the catalog index (durafs.index)
    keys/id-key          the chunk-id key, hex (0600) - needed to write
    keys/recipient.txt   the age recipient (mode key) - needed to write
    keys/identity.txt    the age identity (mode key, 0600) - needed to read; may be
                         removed from a write-only host after `durafs key export-identity`
    keys/durafs-keys.age the keys file every medium carries (mode password): a passphrase
                         that does not open it is wrong, and is refused before any use
    staging/             whole volumes staged from media that had to be waited for
    requests/            open media requests (one JSON file each; `durafs requests`)
    mounts/, logs/       what `durafs mount` serves, and its log in background mode
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import getpass
import json
import os
import secrets
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from durafs.errors import BusyError, CatalogError, CryptoError, NoIdentityError, UsageError
from durafs.format import age
from durafs.format.keys import KEYS_FILE_ENCRYPTED, CatalogKeys, read_keys_file
from durafs.index.catalog import Catalog, open_catalog
from durafs.media.fsutil import fsync_dir, write_all, write_file_durably

CONFIG_FORMAT = 1
#: The environment variables that may hold a passphrase: never passed on to the commands
#: durafs runs (a plan's hooks).
SECRET_ENV = ("DURAFS_PASSPHRASE", "DURAFS_IDENTITY_PASSPHRASE")
DEFAULT_WORK_FACTOR = 18
_T = TypeVar("_T")


def default_home() -> Path:
    """$DURAFS_HOME, else the per-user or system default."""
    env = os.environ.get("DURAFS_HOME")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/durafs")
    return Path.home() / ".local" / "share" / "durafs"


def read_passphrase(prompt: str, *, env: str = "DURAFS_PASSPHRASE", confirm: bool = False) -> bytes:
    """The passphrase from *env*, or asked on the terminal; never logged. *confirm*: a new
    passphrase, asked twice."""
    # the bytes as given: a value that is not UTF-8 cannot be encoded back from os.environ
    value = os.environb.get(env.encode())
    if value is not None:
        if not value:
            raise UsageError(f"{env} is set but empty: a passphrase cannot be empty")
        return _typeable(value, f"{env}: ") if confirm else value
    if not os.isatty(0):
        raise UsageError(f"a passphrase is needed: set {env} or run on a terminal")
    first = _ask(prompt)
    if not first:
        raise UsageError("a passphrase cannot be empty")
    if confirm:
        _typeable(first, "")
        if _ask("again: ") != first:
            raise UsageError("the passphrases do not match")
    return first


def _typeable(passphrase: bytes, source: str) -> bytes:
    """A new passphrase must be one `age` can be given on a terminal, where it asks for
    it when media are read by hand (docs/FORMAT.md §9): UTF-8 text without control
    characters (a newline would end the line typed; most others edit it)."""
    try:
        text = passphrase.decode()
    except UnicodeDecodeError:
        raise UsageError(f"{source}a new passphrase must be UTF-8 text, as typed on a "
                         "terminal (`age` asks for it there)") from None
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise UsageError(f"{source}a new passphrase cannot hold control characters (a "
                         "newline, a tab): it could not be typed where `age` asks for it")
    return passphrase


def _ask(prompt: str) -> bytes:
    """One passphrase typed on the terminal. The errors say nothing of what was typed (a
    decoding error's own message would show a byte of it and where it was)."""
    try:
        return getpass.getpass(prompt).encode()
    except EOFError:  # Ctrl-D
        raise UsageError("no passphrase given (the input ended)") from None
    except UnicodeDecodeError:
        raise UsageError("the passphrase typed is not UTF-8 text") from None


def env_without_secrets() -> dict[bytes, bytes]:
    """This process's environment without the variables of SECRET_ENV."""
    secret = {name.encode() for name in SECRET_ENV}
    return {k: v for k, v in os.environb.items() if k not in secret}


def forget_secret_env() -> None:
    """Drop the variables of SECRET_ENV from this process's environment, once what they
    hold has been read, in a process that lives on (a mount): /proc/PID/environ shows
    anyone running as the same user the environment the process started with, even
    under ptrace restrictions. That copy is the block the kernel set up at exec, which
    unsetenv leaves as it was, so the values there are overwritten first."""
    names = [name.encode() for name in SECRET_ENV if name.encode() in os.environb]
    if not names:
        return
    with contextlib.suppress(ValueError, OSError):  # no glibc `environ`: unset them only
        entries = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
        i = 0
        while (address := entries[i]) is not None:
            name, equals, value = ctypes.string_at(address).partition(b"=")
            if equals and name in names:  # execve takes an entry without "=" too
                ctypes.memset(address + len(name) + 1, 0, len(value))
            i += 1
    for name in names:
        del os.environb[name]  # unsetenv as well


@dataclass
class HomeConfig:
    catalog_id: str
    encryption: str
    scrypt_salt: str = ""
    scrypt_work_factor: int = DEFAULT_WORK_FACTOR


class Home:
    """One catalog directory; opens its index and assembles its keys."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else default_home()
        self.keys_dir = self.path / "keys"
        self.index_path = self.path / "index.sqlite"
        self.staging = self.path / "staging"
        #: Present while `durafs recover` builds this catalog (see begin_recover).
        self.recovering = self.path / "recover-incomplete"
        self._recovering = False

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def passphrase_check(self) -> Path:
        return self.keys_dir / KEYS_FILE_ENCRYPTED

    def exists(self) -> bool:
        return self.config_path.exists() or self.recovering.exists()

    def config(self) -> HomeConfig:
        if self.recovering.exists() and not self._recovering:
            # its index holds some volumes and checkpoints, not all: trusted, it would have
            # verify pass and backups go on with the rest of the catalog out of sight
            raise CatalogError(
                f"{self.path}: `durafs recover` was interrupted while it rebuilt this "
                "catalog: run `durafs recover` again (it starts afresh)")
        if not self.exists():
            raise UsageError(f"no durafs catalog in {self.path}: run `durafs init` first")
        try:
            return HomeConfig(**json.loads(self.config_path.read_text()))
        except (ValueError, TypeError) as exc:
            raise CatalogError(f"{self.config_path}: damaged configuration ({exc})") from exc

    def init(self, encryption: str, *, work_factor: int = DEFAULT_WORK_FACTOR,
             passphrase: bytes | None = None) -> HomeConfig:
        """Create a new catalog: config, keys and an empty index; *passphrase* (mode
        password) is the one every later command is checked against."""
        if self.exists():
            raise UsageError(f"{self.path} already holds a durafs catalog")
        self._make()
        with open_catalog(self.index_path) as catalog:
            catalog.set_meta("encryption", encryption)
            config = HomeConfig(catalog.catalog_id, encryption)
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        id_key = secrets.token_bytes(32)
        _write_private(self.keys_dir / "id-key", id_key.hex() + "\n")
        if encryption == "key":
            identity = age.X25519Identity.generate()
            _write_private(self.keys_dir / "identity.txt", identity.to_str() + "\n")
            _write_private(self.keys_dir / "recipient.txt",
                           identity.recipient().to_str() + "\n", 0o644)
        elif encryption == "password":
            config.scrypt_salt = secrets.token_bytes(16).hex()
            config.scrypt_work_factor = work_factor
            if passphrase is not None:
                keys = CatalogKeys(config.catalog_id, encryption, id_key,
                                   recipients=[_scrypt_recipient(config, passphrase)])
                _write_private(self.passphrase_check, keys.keys_file())
        self._save(config)
        return config

    def _make(self) -> None:
        """Create the catalog directory, for its owner alone: its index names every file
        backed up, and whoever may write in it can swap its configuration or its keys
        (encryption 'none', a recipient of theirs; `keys/` is private, not its place).
        mkdir's mode, unlike the umask's default, holds under any umask. A directory
        that exists (made for it by its owner) is left as it is."""
        with contextlib.suppress(FileExistsError):
            self.path.mkdir(parents=True, mode=0o700)

    def begin_recover(self) -> None:
        """Mark this directory as being rebuilt by `durafs recover` until `end_recover`,
        so no other command trusts what a recover cut short left here; clears what one
        left (a recover starts afresh)."""
        self._make()
        self._recovering = True
        fd = os.open(self.recovering, os.O_WRONLY | os.O_CREAT, 0o600)
        os.fsync(fd)
        os.close(fd)
        fsync_dir(os.fspath(self.path))  # the mark is on the disk before anything it guards
        for leftover in (self.config_path, self.index_path,
                         self.index_path.with_name(self.index_path.name + "-wal"),
                         self.index_path.with_name(self.index_path.name + "-shm")):
            leftover.unlink(missing_ok=True)

    def end_recover(self) -> None:
        self.recovering.unlink()
        fsync_dir(os.fspath(self.path))
        self._recovering = False

    def adopt(self, config: HomeConfig, id_key: bytes, identity: str | None,
              keys_file: bytes | None = None) -> None:
        """Set up an empty catalog directory for an existing catalog (recover); *keys_file*
        is a medium's, opened with the passphrase (mode password)."""
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self.keys_dir / "id-key", id_key.hex() + "\n")
        if config.encryption == "password" and keys_file is not None:
            _write_private(self.passphrase_check, keys_file)
        if identity is not None:
            ident = age.X25519Identity.parse(identity)
            _write_private(self.keys_dir / "identity.txt", ident.to_str() + "\n")
            _write_private(self.keys_dir / "recipient.txt", ident.recipient().to_str() + "\n",
                           0o644)
        self._save(config)

    def _save(self, config: HomeConfig) -> None:
        """Write config.json, the last file a new catalog gets (a directory without it is
        no catalog), after the keys' directory is synced, and synced itself."""
        fsync_dir(os.fspath(self.keys_dir))
        data = (json.dumps(config.__dict__, indent=1) + "\n").encode()
        write_file_durably(os.fspath(self.path), self.config_path.name, data, 0o644,
                           self.config_path.with_suffix(".tmp").name)

    @contextlib.contextmanager
    def plan_lock(self, plan: str) -> Iterator[None]:
        """Held while a backup of *plan* runs: a second one is refused at once, before it
        does any work (both would take the same checkpoint name). The kernel drops the
        lock of a process that dies."""
        locks = self.path / "locks"
        locks.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(locks / f"backup-{plan.encode().hex()}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise BusyError(
                    f"another backup of plan {plan} is running (pid {holder})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def catalog(self, *, readonly: bool = False) -> Catalog:
        # without config.json this is no catalog: say `durafs init`, and leave no index behind
        self.config()
        return open_catalog(self.index_path, readonly=readonly)

    def recipient(self) -> str:
        path = self.keys_dir / "recipient.txt"
        if not path.exists():
            # no catalog at all is another error than a catalog without one
            if self.config().encryption == "key":
                raise CatalogError(f"{path} is missing: this catalog cannot write volumes")
            raise UsageError("this catalog has no age recipient (encryption is not 'key')")
        return _read_key(path, age.X25519Recipient.parse).to_str()

    def identity(self) -> age.X25519Identity:
        path = self.keys_dir / "identity.txt"
        encryption = self.config().encryption
        if encryption != "key":
            raise UsageError(f"this catalog's encryption is {encryption!r}: it has no age "
                             "identity (only 'key' catalogs do)")
        if not path.exists():
            raise UsageError(
                f"{path} is missing: reading needs the identity (durafs recover --identity)"
            )
        identity = _read_key(path, age.parse_identities)[0]
        # another key (an identity file of another catalog put back on a write-only host)
        # would have every volume reported as damage: its own recipient must be the one
        # volumes are written to (a host without it reads only: nothing to compare)
        recipient = path.with_name("recipient.txt")
        own = identity.recipient().to_str()
        theirs = self.recipient() if recipient.exists() else own
        if own != theirs:
            raise UsageError(f"{path}: not this catalog's identity: its public key is {own}, "
                             f"the catalog's ({recipient.name}) {theirs}")
        return identity

    def keys(self, *, read: bool | None) -> CatalogKeys:
        """Keys to write volumes, and with *read* also to read them (identity/passphrase);
        *read* None: the identity too if this host has it (write-only hosts may not)."""
        config = self.config()
        id_key = _read_key(self.keys_dir / "id-key", _parse_id_key)
        keys = CatalogKeys(config.catalog_id, config.encryption, id_key)
        if config.encryption == "key":
            keys.recipients = [age.X25519Recipient.parse(self.recipient())]
            if read or (read is None and (self.keys_dir / "identity.txt").exists()):
                keys.identities = [self.identity()]
        elif config.encryption == "password":
            passphrase = read_passphrase("durafs passphrase: ")
            keys.recipients = [_scrypt_recipient(config, passphrase)]
            keys.identities = [age.ScryptIdentity(passphrase)]
            self._check_passphrase(keys)
        return keys

    def _check_passphrase(self, keys: CatalogKeys) -> None:
        """A wrong passphrase would make a backup write volumes the right one cannot read,
        and make a restore or verify report every file as damaged. The check costs nothing
        more: the scrypt key it derives (the catalog's salt) is the one volumes use.
        Catalogs made before the check was kept have nothing to check against."""
        try:
            data = self.passphrase_check.read_bytes()
        except FileNotFoundError:
            return
        try:
            read_keys_file(data, keys.identities, name=str(self.passphrase_check))
        except NoIdentityError:
            raise UsageError(f"wrong passphrase: it does not open this catalog's keys "
                             f"({self.passphrase_check})") from None


def _read_key(path: Path, parse: Callable[[str], _T]) -> _T:
    """*parse* of the key file at *path*; one that is missing or damaged is named with
    why, never with what it holds (a secret)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise CatalogError(f"{path}: damaged (not text)") from None
    try:
        return parse(text)
    except CryptoError as exc:  # its messages never show the key
        raise CatalogError(f"{path}: damaged ({exc})") from None
    except ValueError:
        raise CatalogError(f"{path}: damaged (not the key it should hold)") from None


def _parse_id_key(text: str) -> bytes:
    key = bytes.fromhex(text.strip())
    if len(key) != 32:
        raise ValueError("the chunk-id key must be 32 bytes")
    return key


def _scrypt_recipient(config: HomeConfig, passphrase: bytes) -> age.ScryptRecipient:
    return age.ScryptRecipient(passphrase, work_factor=config.scrypt_work_factor,
                               salt=bytes.fromhex(config.scrypt_salt))


def _write_private(path: Path, content: str | bytes, mode: int = 0o600) -> None:
    """Write a key file and sync it: in mode key, identity.txt is the only copy of the
    identity until it is exported, and a backup writes volumes only it can open (their
    directory is synced by `_sync_keys`)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        write_all(fd, content.encode() if isinstance(content, str) else content)
        os.fsync(fd)
    finally:
        os.close(fd)
