// The datastore (schema version Datastore): the tables package
// datastore reads and writes in a layer database.
//
// # Invariants
//
//   - A datastore row is identified by (key, type); deleted = 1 makes it a
//     tombstone that hides the same (key, type) in lower layers, as a NULL
//     sector hides the parent's sector.
//   - seq numbers every change of the layer's datastore: a row's seq is the
//     number of its latest change, unique in the layer and increasing, so
//     "rows with seq > cursor" is exactly the set of entries changed since
//     a subscriber's cursor, several changes of one entry counting once.
//   - A live label number belongs to at most one label of the layer
//     (partial unique index); package datastore also enforces it across
//     the chain.
//   - datastore_snapshots rows resolve through the chain like entries; a
//     NULL data column is a tombstone.

package schema

// DatastoreTables is the DDL of the datastore.
const DatastoreTables = `
CREATE TABLE datastore (
  key        TEXT NOT NULL,
  type       TEXT NOT NULL CHECK (type IN ('u32', 'string', 'mem', 'map', 'label')),
  deleted    INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),  -- 1: tombstone
  owner      TEXT NOT NULL DEFAULT '',
  private    INTEGER NOT NULL DEFAULT 0 CHECK (private IN (0, 1)),
  num        INTEGER,                     -- u32 value; label number
  value      BLOB,                        -- string text; mem bytes
  map_source TEXT CHECK (map_source IN ('disk', 'hibernate')),
  map_offset INTEGER,                     -- bytes into the chain's disk or hibernate file
  map_length INTEGER,
  seq        INTEGER NOT NULL,            -- this layer's change number of the latest change
  changed_at TEXT NOT NULL,               -- RFC 3339, UTC
  PRIMARY KEY (key, type)
);
CREATE UNIQUE INDEX datastore_seq ON datastore (seq);
CREATE UNIQUE INDEX datastore_label_number ON datastore (num) WHERE type = 'label' AND deleted = 0;
CREATE TABLE datastore_snapshots (        -- numbered copies of MAP entries
  key      TEXT NOT NULL,
  snapshot INTEGER NOT NULL CHECK (snapshot >= 1),
  data     BLOB,                          -- NULL: tombstone (the map was deleted)
  taken_at TEXT NOT NULL,
  PRIMARY KEY (key, snapshot)
);
CREATE TABLE datastore_subscriptions (    -- one per subscriber (owner), as in MINIX
  owner   TEXT PRIMARY KEY,
  pattern TEXT NOT NULL,                  -- Go regular expression, matched against the whole key
  types   TEXT NOT NULL,                  -- comma list of types; '' means every type
  cursor  INTEGER NOT NULL                -- seq of the last change reported or passed over
);
CREATE TABLE datastore_pending (          -- DSF_INITIAL reports not yet checked
  owner TEXT NOT NULL REFERENCES datastore_subscriptions (owner) ON DELETE CASCADE,
  key   TEXT NOT NULL,
  type  TEXT NOT NULL,
  PRIMARY KEY (owner, key, type)
);
`
