package auth

import "time"

// SetClock makes j read the time from now, so that tests can step
// through its refresh and back-off schedule.
func SetClock(j *JWKS, now func() time.Time) { j.now = now }
