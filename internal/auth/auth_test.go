package auth_test

import (
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keelplatform/keel/internal/auth"
)

var key = []byte("0123456789abcdef0123456789abcdef")

func TestIssueAndVerify(t *testing.T) {
	iss := auth.Issuer{Key: key, TTL: time.Minute}
	token, expires, err := iss.Issue("user-1")
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if d := time.Until(expires); d <= 58*time.Second || d > time.Minute {
		t.Fatalf("expires in %v, want about a minute", d)
	}
	sub, err := auth.Verify(key, auth.DefaultIssuer, token)
	if err != nil || sub != "user-1" {
		t.Fatalf("Verify = %q, %v", sub, err)
	}
}

func TestVerifyRejects(t *testing.T) {
	good := auth.Issuer{Key: key, TTL: time.Minute}
	sign := func(claims jwt.Claims, method jwt.SigningMethod, k any) string {
		t.Helper()
		s, err := jwt.NewWithClaims(method, claims).SignedString(k)
		if err != nil {
			t.Fatalf("sign: %v", err)
		}
		return s
	}
	past := time.Now().Add(-time.Hour)
	otherKey := []byte("ffffffffffffffffffffffffffffffff")
	otherIssuer, _, err := auth.Issuer{Key: key, TTL: time.Minute, Issuer: "someone-else"}.Issue("user-1")
	if err != nil {
		t.Fatal(err)
	}
	wrongKey, _, err := auth.Issuer{Key: otherKey, TTL: time.Minute}.Issue("user-1")
	if err != nil {
		t.Fatal(err)
	}
	valid, _, err := good.Issue("user-1")
	if err != nil {
		t.Fatal(err)
	}

	for name, token := range map[string]string{
		"expired": sign(jwt.RegisteredClaims{
			Issuer: auth.DefaultIssuer, Subject: "user-1",
			IssuedAt: jwt.NewNumericDate(past), ExpiresAt: jwt.NewNumericDate(past.Add(time.Minute)),
		}, jwt.SigningMethodHS256, key),
		"no expiry": sign(jwt.RegisteredClaims{Issuer: auth.DefaultIssuer, Subject: "user-1"}, jwt.SigningMethodHS256, key),
		"no subject": sign(jwt.RegisteredClaims{
			Issuer: auth.DefaultIssuer, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Minute)),
		}, jwt.SigningMethodHS256, key),
		"HS512":        sign(jwt.RegisteredClaims{Issuer: auth.DefaultIssuer, Subject: "u", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Minute))}, jwt.SigningMethodHS512, key),
		"alg none":     sign(jwt.RegisteredClaims{Issuer: auth.DefaultIssuer, Subject: "u", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Minute))}, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType),
		"wrong key":    wrongKey,
		"other issuer": otherIssuer,
		"tampered":     valid[:len(valid)-2] + "xx",
		"garbage":      "not.a.token",
	} {
		t.Run(name, func(t *testing.T) {
			if sub, err := auth.Verify(key, "", token); !errors.Is(err, auth.ErrInvalidToken) {
				t.Fatalf("Verify = %q, %v; want ErrInvalidToken", sub, err)
			}
		})
	}
}

func TestShortKeyRejected(t *testing.T) {
	short := []byte("only-31-bytes-long-0123456789ab")
	if _, _, err := (auth.Issuer{Key: short, TTL: time.Minute}).Issue("u"); !errors.Is(err, auth.ErrKeyTooShort) {
		t.Errorf("Issue with short key: %v", err)
	}
	if _, err := auth.Verify(short, "", "x.y.z"); !errors.Is(err, auth.ErrKeyTooShort) {
		t.Errorf("Verify with short key: %v", err)
	}
	if err := (auth.Issuer{Key: key}).Validate(); err == nil {
		t.Error("Validate accepted a zero TTL")
	}
}
