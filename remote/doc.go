// Package remote keeps sealed hibdisk layers in an S3-compatible object
// store, the way a container registry keeps image layers: by digest.
//
// Layout under s3://BUCKET/PREFIX (docs/remote-work.md):
//
//	PREFIX/blobs/sha256/<hex>   a sealed layer file, a layer's page digests, or a manifest, by the SHA-256 of its bytes
//	PREFIX/refs/<TAG>           "sha256:<hex>\n": the digest of the tag's manifest
//
// A manifest (Manifest, media type ManifestMediaType) lists a chain's
// layers base first with their digests, sizes, the paths pull puts them
// at, and the SHA-256 of every chunk of every layer file; and, for lazy
// reads by page, each layer's page size and the blob of its page
// digests (ManifestLayer.Pages).
//
// # Invariants
//
//   - A blob's key is the digest of its bytes. Blobs are written with
//     If-None-Match: * (a 412 means it is there already) after a HEAD, so
//     a blob is uploaded at most once and never overwritten.
//   - Push writes blobs first, the manifest next, the tag last, so a tag
//     never names a manifest or a layer that is not in the store: an
//     interrupted push leaves no tag, or the tag as it was.
//   - A tag moves only by compare-and-swap: If-Match on the ETag read
//     when the push began (If-None-Match: * for a new tag). A push that
//     lost the race fails with ErrTagMoved and changes nothing.
//   - Pull hands out no unverified byte: every blob is written to a
//     hidden partial file while its chunk digests and whole digest are
//     checked, fsynced, and renamed into place only when all match; a
//     mismatch removes the partial file and fails naming the blob.
//   - What the store says is not trusted: a manifest is verified against
//     its digest before it is parsed, its paths must stay inside the
//     pull directory, and the pulled chain must open with the layers the
//     manifest lists, in its order.
//   - Lazy reads hand out no unverified byte either: every chunk, or
//     every page of a layer with page digests, is checked against the
//     manifest (page digests through the page-digest blob's chunk
//     digests) before SQLite sees it, from the store and the cache alike.
//   - Uploads are signed with the SHA-256 of the bytes push digested (the
//     blob's digest, or each multipart part's), which the server checks:
//     nothing but those bytes is stored under a digest.
package remote
