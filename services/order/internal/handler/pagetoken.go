package handler

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"time"

	"github.com/google/uuid"

	"github.com/keelplatform/keel/services/order/internal/order"
)

// A page token is the keyset cursor, versioned and base64url-encoded
// without padding: one version byte, the create time of the page's last
// order in Unix microseconds (8 bytes, big-endian), then the 16 bytes of
// its id. Callers must treat it as opaque; the version byte lets the
// format change later.
const (
	pageTokenVersion = 1
	pageTokenLen     = 1 + 8 + 16
)

var errBadPageToken = errors.New("malformed page token")

func encodePageToken(c order.Cursor) string {
	b := make([]byte, 0, pageTokenLen)
	b = append(b, pageTokenVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(c.CreateTime.UnixMicro()))
	b = append(b, c.ID[:]...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodePageToken(s string) (order.Cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != pageTokenLen || b[0] != pageTokenVersion {
		return order.Cursor{}, errBadPageToken
	}
	micros := int64(binary.BigEndian.Uint64(b[1:9]))
	id, err := uuid.FromBytes(b[9:])
	if err != nil {
		return order.Cursor{}, errBadPageToken
	}
	return order.Cursor{CreateTime: time.UnixMicro(micros).UTC(), ID: id}, nil
}
