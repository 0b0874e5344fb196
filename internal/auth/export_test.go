package auth

import "time"

// SetClock makes j read the time from now, so that tests can step
// through its refresh and back-off schedule.
func SetClock(j *JWKS, now func() time.Time) { j.now = now }

// VerifyCaller checks a token a call carries with key: a user's identity
// or a process's, which the second result tells.
func VerifyCaller(key []byte, token string) (string, bool, error) {
	return verifyCaller([][]byte{key}, token)
}
