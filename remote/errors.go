package remote

import (
	"errors"
	"fmt"
)

// Errors, grouped by when they happen. Every error of the package wraps
// one of them with what was being done, so callers test with errors.Is.
var (
	// Addressing and connecting.

	// ErrBadURL: not s3://BUCKET/PREFIX[:TAG] (or @sha256:<hex>).
	ErrBadURL = errors.New("bad s3 URL")
	// ErrNoCredentials: the SDK found no credentials (environment,
	// shared files, profiles, instance role).
	ErrNoCredentials = errors.New("no AWS credentials")
	// ErrAccessDenied: the store refused the credentials or the request.
	ErrAccessDenied = errors.New("access denied")
	// ErrNoBucket: the bucket does not exist.
	ErrNoBucket = errors.New("no such bucket")

	// Reading.

	// ErrNoTag: the tag does not exist under the prefix.
	ErrNoTag = errors.New("no such tag")
	// ErrMissingBlob: a blob a manifest or tag names is not in the store.
	ErrMissingBlob = errors.New("blob missing from the store")
	// ErrDigestMismatch: bytes read from the store do not have the
	// digest they are stored by (a blob changed in the bucket).
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrBlobChanged: a ranged read's If-Match failed: the object is not
	// the one whose ETag the reader pinned.
	ErrBlobChanged = errors.New("blob changed in the store")
	// ErrBadManifest: a manifest that does not parse or is inconsistent.
	ErrBadManifest = errors.New("bad manifest")

	// Writing.

	// ErrTagMoved: another push moved the tag after this push read it.
	ErrTagMoved = errors.New("tag moved by another push")
	// ErrNotPushable: the chain cannot be pushed as it is (a parent of
	// another format, a parent path outside the top's directory).
	ErrNotPushable = errors.New("chain cannot be pushed")
	// ErrExists: pull found a file in the way with other bytes.
	ErrExists = errors.New("file exists with other content")
)

// TagMovedError is the ErrTagMoved of a lost tag race: Now is the
// manifest digest the tag names now ("" when it was deleted).
type TagMovedError struct {
	URL string // s3://BUCKET/PREFIX
	Tag string
	Now string
}

func (e *TagMovedError) Error() string {
	now := "now " + e.Now
	if e.Now == "" {
		now = "it was deleted"
	}
	return fmt.Sprintf("tag %s was moved by another push (%s); pull %s:%s to see it, or push again to replace it", e.Tag, now, e.URL, e.Tag)
}

func (e *TagMovedError) Unwrap() error { return ErrTagMoved }

// CredentialsError is the ErrNoCredentials of Open: the SDK found none
// (Detail says what it tried last).
type CredentialsError struct {
	URL    string
	Detail string
}

func (e *CredentialsError) Error() string {
	return fmt.Sprintf("no AWS credentials for %s: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (the SDK said: %s)", e.URL, e.Detail)
}

func (e *CredentialsError) Unwrap() error { return ErrNoCredentials }
