package saga

import (
	"testing"
	"time"
)

// TestJitterStaysWithinItsFactor: jitter varies a delay at random by up
// to its factor of it, up or down, evenly: never past the bounds, both
// ends reached, centred on the delay; no factor, no variation.
func TestJitterStaysWithinItsFactor(t *testing.T) {
	const d = time.Second
	for _, factor := range []float64{0.25, 0.5, 1} {
		lo, hi := time.Duration(float64(d)*(1-factor)), time.Duration(float64(d)*(1+factor))
		least, most, sum := hi, lo, 0.0
		const n = 20000
		for range n {
			got := jitter(d, factor)
			if got < lo || got > hi {
				t.Fatalf("jitter(%v, %v) = %v, want within [%v, %v]", d, factor, got, lo, hi)
			}
			least, most = min(least, got), max(most, got)
			sum += float64(got)
		}
		spread := time.Duration(float64(d) * factor / 10)
		if least > lo+spread || most < hi-spread {
			t.Errorf("factor %v: jitter ranged over [%v, %v], want about [%v, %v]", factor, least, most, lo, hi)
		}
		if mean := time.Duration(sum / n); mean < d-spread/2 || mean > d+spread/2 {
			t.Errorf("factor %v: mean %v, want about %v", factor, mean, d)
		}
	}
	if got := jitter(d, 0); got != d {
		t.Errorf("jitter(%v, 0) = %v, want it unchanged", d, got)
	}
}
