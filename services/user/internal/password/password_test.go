package password_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/keelplatform/keel/services/user/internal/password"
)

var cheap = password.Params{Time: 1, Memory: 1024, Threads: 1}

func TestHashAndVerify(t *testing.T) {
	const pw = "correct horse battery staple"
	h, err := password.Hash(pw, cheap)
	if err != nil {
		t.Fatalf("Hash: %v", err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=1024,t=1,p=1$") {
		t.Fatalf("hash %q is not PHC argon2id with the given parameters", h)
	}
	if strings.Contains(h, pw) {
		t.Fatal("hash contains the password")
	}
	if ok, err := password.Verify(pw, h); err != nil || !ok {
		t.Fatalf("Verify right password = %v, %v", ok, err)
	}
	if ok, err := password.Verify(pw+"!", h); err != nil || ok {
		t.Fatalf("Verify wrong password = %v, %v", ok, err)
	}
	again, err := password.Hash(pw, cheap)
	if err != nil {
		t.Fatalf("Hash: %v", err)
	}
	if again == h {
		t.Fatal("two hashes of one password are equal: salt is not random")
	}
}

func TestDefaultParams(t *testing.T) {
	if testing.Short() {
		t.Skip("default parameters cost 19 MiB and tens of milliseconds")
	}
	h, err := password.Hash("s3cret-passw0rd", password.DefaultParams)
	if err != nil {
		t.Fatalf("Hash: %v", err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q does not carry OWASP's minimum parameters", h)
	}
	if ok, err := password.Verify("s3cret-passw0rd", h); err != nil || !ok {
		t.Fatalf("Verify = %v, %v", ok, err)
	}
}

func TestVerifyMalformed(t *testing.T) {
	for _, encoded := range []string{
		"",
		"plain",
		"$argon2i$v=19$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=16$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=1024,t=1,p=1$!!!$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$",
	} {
		if ok, err := password.Verify("pw", encoded); ok || !errors.Is(err, password.ErrMalformedHash) {
			t.Errorf("Verify(%q) = %v, %v; want ErrMalformedHash", encoded, ok, err)
		}
	}
}

func TestHashRejectsZeroParams(t *testing.T) {
	if _, err := password.Hash("pw", password.Params{}); err == nil {
		t.Fatal("Hash with zero parameters succeeded")
	}
}
