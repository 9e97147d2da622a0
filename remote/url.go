package remote

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// Scheme starts every store URL.
const Scheme = "s3://"

// DefaultTag is the tag of a push that names none.
const DefaultTag = "latest"

// URL is a parsed s3://BUCKET/PREFIX[:TAG] or s3://BUCKET/PREFIX@sha256:<hex>.
type URL struct {
	Bucket string
	Prefix string // without leading or trailing slash; may be ""
	Tag    string // "" when none was given
	Digest string // "sha256:<hex>" of the pinned form's manifest; "" otherwise
}

var (
	// tagPattern is OCI's tag grammar.
	tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	// bucketPattern is S3's bucket naming rule, loosely (dots and
	// upper case for other stores' sake).
	bucketPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{1,62}$`)
)

// ParseURL parses a store URL. A tag is what follows the last ':' after
// the bucket, when it contains no '/'.
func ParseURL(s string) (URL, error) {
	rest, ok := strings.CutPrefix(s, Scheme)
	if !ok {
		return URL{}, fmt.Errorf("%q: want s3://BUCKET/PREFIX[:TAG]: %w", s, ErrBadURL)
	}
	var u URL
	if i := strings.Index(rest, "@"); i >= 0 {
		u.Digest = rest[i+1:]
		rest = rest[:i]
		if !validDigest(u.Digest) {
			return URL{}, fmt.Errorf("%q: pinned digest %q is not sha256:<64 hex digits>: %w", s, u.Digest, ErrBadURL)
		}
	}
	bucket, path, _ := strings.Cut(rest, "/")
	if i := strings.LastIndex(path, ":"); i >= 0 && u.Digest == "" {
		u.Tag = path[i+1:]
		path = path[:i]
		if !tagPattern.MatchString(u.Tag) {
			return URL{}, fmt.Errorf("%q: tag %q: want letters, digits, '_', '.', '-' (at most 128, not starting with '.' or '-'): %w", s, u.Tag, ErrBadURL)
		}
	} else if i >= 0 {
		return URL{}, fmt.Errorf("%q: both a tag and a digest: %w", s, ErrBadURL)
	}
	if bucket == "" {
		return URL{}, fmt.Errorf("%q: no bucket: want s3://BUCKET/PREFIX[:TAG]: %w", s, ErrBadURL)
	}
	if !bucketPattern.MatchString(bucket) {
		return URL{}, fmt.Errorf("%q: bucket %q is not a bucket name (3-63 letters, digits, '.', '-', '_'): %w", s, bucket, ErrBadURL)
	}
	u.Bucket = bucket
	u.Prefix = strings.Trim(path, "/")
	for _, part := range strings.Split(u.Prefix, "/") {
		if part == "." || part == ".." || (part == "" && u.Prefix != "") {
			return URL{}, fmt.Errorf("%q: prefix %q has an empty, '.' or '..' element: %w", s, u.Prefix, ErrBadURL)
		}
	}
	return u, nil
}

// Base is the URL without tag or digest: s3://BUCKET/PREFIX.
func (u URL) Base() string {
	if u.Prefix == "" {
		return Scheme + u.Bucket
	}
	return Scheme + u.Bucket + "/" + u.Prefix
}

// String is the URL as ParseURL reads it.
func (u URL) String() string {
	switch {
	case u.Digest != "":
		return u.Base() + "@" + u.Digest
	case u.Tag != "":
		return u.Base() + ":" + u.Tag
	}
	return u.Base()
}

// key is the object key of name under the prefix.
func (u URL) key(name string) string {
	if u.Prefix == "" {
		return name
	}
	return u.Prefix + "/" + name
}

func validDigest(s string) bool { return sqlitelayer.ValidDigest(s) }
