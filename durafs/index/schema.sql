-- SPDX-License-Identifier: GPL-3.0-or-later
--
-- The durafs index: the local catalog of pools, media, volumes, chunk locations, plans,
-- checkpoints and every checkpoint's tree. This file is the authoritative description of
-- the schema: read the comments before writing a query.
--
-- The index is an accelerator. Everything in it except `media.location` (what a human
-- typed) can be rebuilt from the media: labels and markers give media, volume headers give
-- volumes, manifests give chunks, catalog volumes give plans, checkpoints and trees.
-- It never holds a secret (no keys, passphrases or cloud credentials).
--
-- Conventions
--   * Times are `*_ns` integers: nanoseconds since the Unix epoch, UTC.
--   * Sizes and offsets are integers in bytes.
--   * JSON columns hold compact UTF-8 JSON text; file names inside JSON are os.fsdecode()d
--     (surrogateescape) and then \u-escaped, so non-UTF-8 bytes survive the round trip.
--   * File names and symlink targets are BLOBs holding the raw bytes, never text.
--   * Ids that something outside a single query keeps (inode numbers in a mount, chunk ids
--     packed in `versions.chunks`, hard-link group ids) are AUTOINCREMENT, so a deleted row's
--     id is never given to a new row.
--   * Every table is STRICT: a value of the wrong type is an error, not a silent conversion.
--   * PRAGMA user_version (at the end of this file) is the schema version. durafs.index.db
--     refuses an index newer than it knows and upgrades older ones with its migrations.


-- Facts about this index as a whole, one row per key:
--   catalog_id      text, UUID of the catalog; every volume header and medium marker repeats
--                   it, and a volume with another catalog_id is foreign.
--   created_ns      integer, when the index was created.
--   format_version  integer, the on-media format version (docs/FORMAT.md) this index was
--                   created for.
--   encryption      text, 'none', 'key' or 'password': how volumes of this catalog are
--                   encrypted. Only the mode: the keys themselves are never stored here.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,  -- name of the fact (see above)
    value ANY                         -- its value; type depends on the key
) STRICT;


-- A pool: media of one kind that a plan writes to. Two pools are two independent copies,
-- so chunk deduplication never crosses pools.
CREATE TABLE pools (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- referenced by media and chunks
    name        TEXT NOT NULL UNIQUE,               -- what users and volume headers call it
    kind        TEXT NOT NULL CHECK (kind IN ('dir', 'tape', 's3')),  -- driver of its media
    config      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(config)),  -- driver settings, a
                                                    -- JSON object; credentials stay outside
    volume_size INTEGER NOT NULL CHECK (volume_size > 0),  -- target size of a data volume
    created_ns  INTEGER NOT NULL                    -- when the pool was added
) STRICT;


-- A medium: one tape, one disk, one bucket/prefix, one directory. A row exists from the
-- moment the medium was labelled (given its marker) by durafs.
CREATE TABLE media (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- referenced by volumes
    pool_id      INTEGER NOT NULL REFERENCES pools (id),  -- the pool it belongs to, for life
    uuid         TEXT NOT NULL UNIQUE,   -- medium_id of its marker/label: how it is recognised
    label        TEXT NOT NULL UNIQUE,   -- what a human reads: barcode "BUP-00012", "HDD-003"
    kind         TEXT NOT NULL CHECK (kind IN ('dir', 'tape', 's3')),  -- always = pool's kind
    path         TEXT,                   -- dir media: directory where it was last seen;
                                         -- s3: bucket/prefix; NULL for tapes or never seen
    location     TEXT NOT NULL DEFAULT '',  -- free text from the user: "shelf 2", "office"
    capacity     INTEGER CHECK (capacity IS NULL OR capacity > 0),  -- usable bytes;
                                         -- NULL = unknown or unbounded (s3)
    used         INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),  -- bytes durafs has written
                                         -- to it (set by the engine; labels included)
    state        TEXT NOT NULL DEFAULT 'active'  -- 'active': writable; 'full': no room
                                         -- for a volume when last tried (a dir medium
                                         -- becomes active again once it has room);
                 CHECK (state IN ('active', 'full', 'retired')),  -- 'retired': never again
    last_seen_ns INTEGER,                -- last time it was online; NULL = not since added
    created_ns   INTEGER NOT NULL        -- when durafs labelled it
) STRICT;
CREATE INDEX media_pool ON media (pool_id);


-- A volume: one self-contained archive on a medium (tape file, disk file, object). A row
-- is inserted only once the volume is completely and safely on its medium (after the
-- seal is written and flushed), so every row here can be read back.
CREATE TABLE volumes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- referenced by chunks
    medium_id   INTEGER NOT NULL REFERENCES media (id),  -- the medium holding it
    uuid        TEXT NOT NULL UNIQUE,   -- volume_id of its header; 'lost-…' for the
                                        -- stand-in `recover` makes for chunks it found on
                                        -- no medium (in lost_volumes, no name, size 0)
    kind        TEXT NOT NULL CHECK (kind IN ('data', 'catalog', 'index')),  -- header kind
    seq         INTEGER NOT NULL CHECK (seq >= 1),  -- order on the medium: 1, 2, 3 ...
    name        TEXT,                   -- dir: file name relative to the medium root;
                                        -- s3: object key; NULL on tape
    plain_size  INTEGER NOT NULL CHECK (plain_size >= 0),   -- bytes of the tar stream
    stored_size INTEGER NOT NULL CHECK (stored_size >= 0),  -- bytes on the medium (after
                                        -- age encryption; = plain_size without it)
    tape_file   INTEGER,                -- tape: file number (0 is the label); NULL otherwise
    tape_block  INTEGER,                -- tape: logical block of its first record, for
                                        -- LOCATE; NULL otherwise
    created_ns  INTEGER NOT NULL        -- when writing it started
) STRICT;
CREATE UNIQUE INDEX volumes_medium_seq ON volumes (medium_id, seq);


-- Volumes the index records but their medium has lost: found missing by `verify` (the
-- medium online, the volume's file gone). Nothing is deduplicated against their chunks:
-- a backup whose source still has such a chunk stores it again, and the chunk's row moves
-- to that copy, so every checkpoint using it is whole again; a lost catalog volume is
-- written again (as full trees, with the deltas after it). A lost volume stays in
-- `volumes` (its seq is never given again); a verify that finds it again drops its row
-- here.
CREATE TABLE lost_volumes (
    volume_id INTEGER PRIMARY KEY REFERENCES volumes (id),  -- the volume found missing
    since_ns  INTEGER NOT NULL  -- when a verify first found it missing
) STRICT;


-- Where each chunk of file content is stored. One row per chunk per pool: deduplication
-- is per pool, so the same content stored in two pools has two rows. A chunk that was
-- stored twice in one pool (a resumed run) keeps its first location here, unless that
-- location is in a lost volume (`lost_volumes`) or found damaged (`damaged_chunks`): then
-- the row moves to the new copy.
-- Invariant: the medium of volume_id belongs to pool_id.
CREATE TABLE chunks (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- packed into versions.chunks: never reused
    pool_id   INTEGER NOT NULL REFERENCES pools (id),  -- dedup scope
    cid       BLOB NOT NULL CHECK (length(cid) = 32),  -- chunk id: BLAKE3-256 of the
                                                  -- plaintext keyed with the catalog's id key
    volume_id INTEGER NOT NULL REFERENCES volumes (id),  -- the volume holding its frame
    offset    INTEGER NOT NULL CHECK (offset >= 0),  -- where its frame starts in the volume's
                                                  -- plaintext (unencrypted tar) stream
    length    INTEGER NOT NULL CHECK (length > 0),   -- bytes of the frame
    size      INTEGER NOT NULL CHECK (size >= 0),    -- plaintext bytes of the chunk
    raw       INTEGER NOT NULL CHECK (raw IN (0, 1)),  -- 1: the frame holds raw blocks
                                                  -- (stored uncompressed)
    fpos      INTEGER NOT NULL DEFAULT 0 CHECK (fpos >= 0)  -- where the chunk starts in its
                                                  -- frame's content: 0 for a frame of its
                                                  -- own; in a pack (several small chunks in
                                                  -- one frame, docs/FORMAT.md §2.2) chunks
                                                  -- share offset and length, not fpos
) STRICT;
CREATE UNIQUE INDEX chunks_pool_cid ON chunks (pool_id, cid);
CREATE INDEX chunks_volume ON chunks (volume_id);


-- Chunks `verify` found damaged where their row says they are (the frame unreadable, or
-- not what its id says; or their whole volume unreadable). Like the chunks of lost
-- volumes, they are not deduplicated against: a backup whose source still has such a
-- chunk stores it again, and the chunk's row moves to that copy (its row here goes), so
-- every checkpoint using it is whole again. A verify that reads one sound again drops its
-- row here (the damage was a read error that passed). Nothing is removed for damage.
CREATE TABLE damaged_chunks (
    chunk_id INTEGER PRIMARY KEY REFERENCES chunks (id),  -- the chunk found damaged
    since_ns INTEGER NOT NULL  -- when a verify first found it damaged
) STRICT;


-- A plan: sources, target pools, schedule, retention. Its checkpoints and trees hang
-- off it.
CREATE TABLE plans (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- referenced by checkpoints and paths
    name       TEXT NOT NULL UNIQUE,   -- the directory under the mount point
    config     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(config)),  -- the plan's settings
                                       -- as a JSON object
    last_seq   INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),  -- highest checkpoint seq
                                       -- ever committed (0: none). It never goes down, even
                                       -- when checkpoints are pruned, so a seq is never reused
    created_ns INTEGER NOT NULL        -- when the plan was first seen
) STRICT;


-- A checkpoint: one completed run of a plan, an immutable tree. The row and the tree's
-- versions are committed in one transaction, so a row here always has a complete tree.
CREATE TABLE checkpoints (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- row id (the tree uses seq)
    plan_id     INTEGER NOT NULL REFERENCES plans (id),  -- whose run it was
    seq         INTEGER NOT NULL CHECK (seq >= 1),  -- 1, 2, 3 ... within the plan, in time
                                        -- order; versions.first_seq/last_seq refer to it
    name        TEXT NOT NULL,          -- sortable UTC time "2026-11-21T21-47-33Z": the
                                        -- directory under the plan in the mount
    created_ns  INTEGER NOT NULL,       -- when the run started (the source's state is
                                        -- from between this and finished_ns)
    finished_ns INTEGER NOT NULL,       -- when its tree was committed
    state       TEXT NOT NULL DEFAULT 'complete'  -- only complete runs have a row
                CHECK (state IN ('complete')),
    sources     TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(sources)),  -- JSON: the source
                                        -- paths as the plan named them
    stats       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(stats))  -- JSON object: counts
                                        -- and byte totals reported by the engine
) STRICT;
CREATE UNIQUE INDEX checkpoints_plan_seq ON checkpoints (plan_id, seq);
CREATE UNIQUE INDEX checkpoints_plan_name ON checkpoints (plan_id, name);


-- Trees. A path row is the stable identity of one path of one plan, across all its
-- checkpoints: "/" is the plan's root row (parent_id NULL, name x''), and /home/alice is
-- root -> 'home' -> 'alice'. What a path was in each checkpoint is in `versions`.
-- Path rows are never renamed: a renamed directory is a new path (with new versions) and
-- the old one gets no version in later checkpoints.
CREATE TABLE paths (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- = path_names.rowid; kept by the mount
    plan_id   INTEGER NOT NULL REFERENCES plans (id),  -- the plan whose trees it is in
    parent_id INTEGER REFERENCES paths (id),  -- the directory holding it (same plan);
                                              -- NULL only for the plan's root
    name      BLOB NOT NULL,  -- one path component, raw bytes: never empty (except the
                              -- root's x''), never containing '/' or NUL, never '.' or '..'
    CHECK ((parent_id IS NULL) = (name = x''))
) STRICT;
CREATE UNIQUE INDEX paths_child ON paths (parent_id, name);
CREATE UNIQUE INDEX paths_root ON paths (plan_id) WHERE parent_id IS NULL;


-- What one path was over a run of consecutive checkpoints of its plan. A version is valid
-- for every checkpoint seq with first_seq <= seq <= coalesce(last_seq, infinity).
-- Invariants:
--   * The versions of one path never overlap, so at most one is valid at a seq, and the
--     valid one is the one with the greatest first_seq <= seq (if it has not ended).
--   * A version is valid at seq only if its parent path has a 'd' version valid at seq.
--   * last_seq IS NULL ("open") means the version is in the plan's newest checkpoint; a
--     new checkpoint leaves unchanged entries open (no write at all) and closes the others.
--   * A member of a hard-link group is valid only while the group's first member is.
-- The compact encodings of `xattrs` and `chunks` are defined in durafs/index/rows.py and
-- documented beside the columns.
CREATE TABLE versions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- mounts derive inode numbers from it
    plan_id     INTEGER NOT NULL REFERENCES plans (id),  -- = paths.plan_id of path_id,
                                        -- copied so the open versions of a plan are indexed
    path_id     INTEGER NOT NULL REFERENCES paths (id),  -- which path this is a version of
    first_seq   INTEGER NOT NULL CHECK (first_seq >= 1),  -- first checkpoint it is in
    last_seq    INTEGER,                -- last checkpoint it is in; NULL = still in the
                                        -- newest checkpoint (open)
    type        TEXT NOT NULL CHECK (type IN ('d', 'f', 'l', 'c', 'b', 'p', 's')),  -- dir,
                                        -- file, symlink, char dev, block dev, FIFO, socket
    mode        INTEGER NOT NULL CHECK (mode BETWEEN 0 AND 4095),  -- st_mode & 0o7777
    uid         INTEGER NOT NULL,       -- owner's numeric id on the source
    gid         INTEGER NOT NULL,       -- group's numeric id on the source
    uname       TEXT,                   -- owner's name on the source; NULL if it had none
    gname       TEXT,                   -- group's name on the source; NULL if it had none
    size        INTEGER NOT NULL CHECK (size >= 0),  -- st_size; for files the length,
                                        -- holes included
    mtime_ns    INTEGER NOT NULL,       -- st_mtime_ns
    atime_ns    INTEGER NOT NULL,       -- st_atime_ns (not compared: reading changes it)
    ctime_ns    INTEGER NOT NULL,       -- st_ctime_ns
    ino         INTEGER NOT NULL,       -- st_ino on the source
    dev         INTEGER NOT NULL,       -- st_dev on the source
    nlink       INTEGER NOT NULL,       -- st_nlink on the source (links outside the backup
                                        -- count too; a mount counts the group instead)
    rdev        INTEGER NOT NULL DEFAULT 0,  -- st_rdev for 'c' and 'b'; 0 otherwise
    target      BLOB,                   -- symlink target, raw bytes; NULL unless type 'l'
    xattrs      BLOB,                   -- the source's xattrs; NULL = none. Records sorted
                                        -- by name, none repeated: u16 name length, name,
                                        -- u32 value length, value (little-endian)
    hardlink_id INTEGER,                -- hard-link group: id of the version of the group's
                                        -- first member in walk order (that member points to
                                        -- itself); NULL = not hard-linked. No FK, checked
                                        -- by fsck
    chunks      BLOB,                   -- 'f' only: pieces, 20 bytes each, sorted by file
                                        -- offset, not overlapping: u64 file offset, i64
                                        -- chunks.id, u32 size (little-endian). Bytes no
                                        -- piece covers are holes. NULL for non-files
    blake3      BLOB CHECK (blake3 IS NULL OR length(blake3) = 32),  -- 'f' only: unkeyed
                                        -- BLAKE3-256 of the whole content; NULL otherwise
    CHECK (last_seq IS NULL OR last_seq >= first_seq)
) STRICT;
CREATE UNIQUE INDEX versions_path_seq ON versions (path_id, first_seq);
CREATE INDEX versions_open ON versions (plan_id, path_id) WHERE last_seq IS NULL;
CREATE INDEX versions_hardlink ON versions (hardlink_id) WHERE hardlink_id IS NOT NULL;


-- Names of paths for `durafs find`: substring, LIKE and GLOB search through trigrams.
-- Invariant: exactly one row per paths row, rowid = paths.id, written in the same
-- transaction as the paths row by the code that inserts paths (durafs/index/treewriter.py).
CREATE VIRTUAL TABLE path_names USING fts5 (
    name,  -- paths.name decoded as UTF-8, undecodable bytes as U+FFFD (the root: '')
    tokenize = 'trigram'
);


PRAGMA user_version = 4;
