-- What OpenVMM's SqliteDiskLayer::new runs to format a layer
-- (microsoft/openvmm, vm/devices/storage/disklayer_sqlite/src/lib.rs:
-- the journal_mode pragma, schema::DEFINE_TABLE_SECTORS and
-- schema::DEFINE_TABLE_METADATA, each statement's text as in the source),
-- for the sqlite3 shell. The meta row follows, written by the test.
PRAGMA journal_mode=WAL;

CREATE TABLE sectors (
    -- if data is NULL, that indicates an all-zero sector.
    -- otherwise, data has len == SECTOR_SIZE, containing the sector data.
    sector INTEGER NOT NULL,
    data   BLOB,
    PRIMARY KEY (sector)
)
;

CREATE TABLE meta (
    metadata TEXT NOT NULL -- stored as JSON
)
;
