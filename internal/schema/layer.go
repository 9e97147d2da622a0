// The layer tables (schema version Layer) and what version Generations
// adds to them.

package schema

// LayerTables is the DDL of the layer tables of DESIGN.md: the layer row,
// the disk (sectors) and the hibernate file (hibernate_blocks).
const LayerTables = `
CREATE TABLE layer (
  id            INTEGER PRIMARY KEY CHECK (id = 1),
  uuid          TEXT NOT NULL,
  sector_size   INTEGER NOT NULL,
  disk_size     INTEGER NOT NULL,
  parent_path   TEXT,
  parent_format TEXT,
  parent_uuid   TEXT,
  parent_size   INTEGER,
  parent_digest TEXT,
  read_only     INTEGER NOT NULL DEFAULT 0,
  created_at    TEXT NOT NULL,
  label         TEXT
);
CREATE TABLE sectors (sector INTEGER PRIMARY KEY, data BLOB);
CREATE TABLE hibernate_blocks (block INTEGER PRIMARY KEY, data BLOB);
`

// GenerationColumns is the DDL of version Generations: a layer's
// generation counts the committed transactions that changed its content
// (sectors, hibernate blocks, size); a child records its hibdisk parent's
// generation, and a raw parent's whole-content digest and file identity,
// when it is attached, so that a base changed in place is caught. The
// layer engine bumps the generation once per committing transaction (with
// the triggers off on its connection); the triggers bump it for every
// other SQL client, once per changed row. Generations start at 1; a NULL
// parent_generation means "not recorded" (children older than this
// version).
const GenerationColumns = `
ALTER TABLE layer ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
ALTER TABLE layer ADD COLUMN parent_generation INTEGER;
ALTER TABLE layer ADD COLUMN parent_sha256 TEXT;
ALTER TABLE layer ADD COLUMN parent_stat TEXT;
CREATE TRIGGER sectors_insert_generation AFTER INSERT ON sectors BEGIN UPDATE layer SET generation = generation + 1; END;
CREATE TRIGGER sectors_update_generation AFTER UPDATE ON sectors BEGIN UPDATE layer SET generation = generation + 1; END;
CREATE TRIGGER sectors_delete_generation AFTER DELETE ON sectors BEGIN UPDATE layer SET generation = generation + 1; END;
CREATE TRIGGER hibernate_blocks_insert_generation AFTER INSERT ON hibernate_blocks BEGIN UPDATE layer SET generation = generation + 1; END;
CREATE TRIGGER hibernate_blocks_update_generation AFTER UPDATE ON hibernate_blocks BEGIN UPDATE layer SET generation = generation + 1; END;
CREATE TRIGGER hibernate_blocks_delete_generation AFTER DELETE ON hibernate_blocks BEGIN UPDATE layer SET generation = generation + 1; END;
CREATE TRIGGER layer_size_generation AFTER UPDATE OF sector_size, disk_size ON layer BEGIN UPDATE layer SET generation = generation + 1; END;
`

// ReadCacheColumn is the DDL of version ReadCache: a layer made with
// `create --read-cache` is a read cache of its lower layers (typically a
// remote base): whoever serves it writable copies what reads find below
// into it (diffdisk.Options.ReadCache), so every block crosses the
// network once. Setting it does not move the generation (it changes no
// content).
const ReadCacheColumn = `
ALTER TABLE layer ADD COLUMN read_cache INTEGER NOT NULL DEFAULT 0 CHECK (read_cache IN (0, 1));
`

// AllocationTables is the DDL of version Allocation: the allocation
// summary of the sectors table, one row per run of consecutive sectors
// of one kind (1 a zero sector, a tombstone; 2 data), runs of absent
// sectors not stored. It is written when a layer stops changing (convert
// writes it with the layer, seal and compact before they finish), and
// it describes the layer only while allocation_generation equals the
// layer's generation: any later change to the content moves the
// generation, and the summary is then ignored (and dropped by the next
// summary written). Readers of a layer that cannot change under them map
// it from these few rows instead of every row of sectors: a region's
// map of a base of 16 GiB of data reads a handful of pages instead of
// every leaf of the table, which for a base read lazily over the
// network is the difference between fetching the map and fetching the
// disk.
const AllocationTables = `
CREATE TABLE allocation (
  start INTEGER PRIMARY KEY,           -- first sector of the run
  count INTEGER NOT NULL CHECK (count > 0),
  kind  INTEGER NOT NULL CHECK (kind IN (1, 2))  -- 1 zero (tombstones), 2 data
);
ALTER TABLE layer ADD COLUMN allocation_generation INTEGER;
`
