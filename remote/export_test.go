package remote

import (
	"bytes"
	"context"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// SetHook tells hook of each step a push through s completes (Store.hook).
func SetHook(s *Store, hook func(event string)) { s.hook = hook }

// MultipartUploads counts the multipart uploads in progress in s's
// bucket: an interrupted push must leave none.
func MultipartUploads(ctx context.Context, s *Store) (int, error) {
	out, err := s.client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(s.url.Bucket)})
	if err != nil {
		return 0, err
	}
	return len(out.Uploads), nil
}

// FileDigestForTest is fileDigest.
func FileDigestForTest(path string) (string, int64, error) { return fileDigest(path) }

// ReplaceObjectForTest overwrites an object through the S3 API.
func ReplaceObjectForTest(ctx context.Context, s *Store, key string, b []byte) error {
	_, err := s.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(s.url.Bucket), Key: aws.String(key), Body: bytes.NewReader(b)})
	return err
}

// PutBlobForTest uploads b as the blob with digest d (which need not be
// b's), signed with parts for a multipart upload.
func PutBlobForTest(ctx context.Context, s *Store, d string, b []byte, parts []string) (bool, error) {
	return s.putBlob(ctx, d, bytes.NewReader(b), int64(len(b)), parts)
}
