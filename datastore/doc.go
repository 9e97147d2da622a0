// Package datastore keeps typed key/value entries in a layer chain, after
// MINIX 3's DataStore server: components of a system under test (a guest
// agent, a test harness, a device model) back up small pieces of state,
// get them back after a restart, and exchange data indirectly. The entries
// live in the layer database (schema in internal/schema), so they are
// stacked, snapshotted and diffed with the machine.
//
// # Entries
//
// An entry is identified by its key and its type; the same key may exist
// once per type. The types:
//
//   - U32: an unsigned 32-bit number.
//   - STRING: text; retrieving it names a length bound, and a string longer
//     than the bound is refused (ErrTooSmall), never cut.
//   - MEM: a copied byte range; a retrieve into a smaller buffer copies the
//     start and reports the full length (partial retrieve).
//   - MAP: a live range published by reference, of the chain's disk or
//     hibernate file. Retrieving it reads the range as it is now;
//     SnapshotMap copies it into a numbered snapshot (1, 2, ...) that can be
//     retrieved later. A MAP is never overwritten; deleting it deletes its
//     snapshots.
//   - LABEL: a name server, a bijective map of names to numbers. A label is
//     found by name or by number; neither side is ever duplicated.
//
// Publishing an existing entry fails with ErrExists unless the Overwrite
// flag is given. A LABEL is existing when its name or its number is taken:
// overwriting by number renames the label. Publishing a label number that
// another label holds, while the name is taken too, is refused.
//
// Every entry has an owner (the publisher's name, any string). A Private
// entry cannot be retrieved, overwritten, subscribed to or snapshotted by
// another owner. As in MINIX, only the owner may delete an entry, private
// or not, and overwriting a public entry makes the publisher its owner.
//
// # Subscriptions
//
// A subscriber (one per owner name, as in MINIX) names a regular
// expression, matched against whole keys (RE2 syntax, anchored), and a set
// of types. Check returns one changed entry per call, and reports false
// when there are none; an entry changed several times since the last
// Check is reported once. Unlike MINIX, deletions are reported too
// (Change.Deleted), so a subscriber that was down learns of them. The
// Initial flag reports every existing match at once. Snapshots of a MAP do
// not count as changes.
//
// Notifications are durable: each subscription's cursor (the change number
// it has reported up to) is stored in the layer and advanced in the same
// transaction that reports the change, so a subscriber that restarts
// resumes where it left off. A change is reported at most once: a
// subscriber killed between Check and acting on its result does not see it
// again (retrieve the entry to get its current state).
//
// # Layer chains
//
// Entries resolve through the chain like sectors: the topmost layer that
// holds a row for (key, type) supplies it, and a deleted entry is a
// tombstone row that hides the entries below. Writes, subscriptions and
// their cursors go to the top layer; lower layers never change. A new diff
// layer therefore starts with the entries of the chain below and no
// subscriptions.
//
// # Invariants
//
//   - Every change is one synced transaction on the top layer
//     (sqlitelayer.File.Update): the entry row, its tombstones and its change
//     number commit together, and a notification is visible only after the
//     commit.
//   - Change numbers (seq) increase within a layer; a row's seq is that of
//     its latest change, so rows with seq above a cursor are exactly the
//     entries changed since.
//   - A live LABEL number names one label in the resolved chain.
//
// # Processes
//
// A Store reads the top layer through its own short read transactions, so
// it sees what other processes commit. Writes from several processes to a
// layer are safe for the datastore, but a layer being served (hibdisk
// serve) keeps a read transaction open between guest requests, and a
// commit from another process would make the server's next write fail; so
// while a layer is served, other processes reach its datastore through the
// server (Serve, Dial): OpenPath does that on its own.
package datastore
