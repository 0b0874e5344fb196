package saga

import "github.com/keelplatform/keel/internal/drill"

// Point names a kind of boundary in the life of a saga; the package
// documentation lists them in order.
type Point string

// The points a driver passes; see the package documentation.
const (
	PointCreated       Point = "created"
	BeforeAction       Point = "before-action"
	AfterAction        Point = "after-action"
	ActionSaved        Point = "action-saved"
	ActionFailed       Point = "action-failed"
	FailureSaved       Point = "failure-saved"
	BeforeCompensation Point = "before-compensation"
	AfterCompensation  Point = "after-compensation"
	CompensationSaved  Point = "compensation-saved"
)

// Boundary is one boundary a driver passes, between a write and a call.
type Boundary struct {
	// SagaID is the id of the saga.
	SagaID string
	// Point is the kind of boundary.
	Point Point
	// Step is the index of the step concerned, -1 for PointCreated.
	Step int
	// StepName is that step's name, "" for PointCreated.
	StepName string
}

// String returns the boundary's name: "created", or
// "<point>:<step name>", e.g. "after-action:charge-payment".
func (b Boundary) String() string {
	if b.StepName == "" {
		return string(b.Point)
	}
	return string(b.Point) + ":" + b.StepName
}

// KillAt returns a boundary hook for [Options.Boundary] that kills the
// process (SIGKILL on Unix) when a driver reaches the boundary whose
// [Boundary.String] is name, for crash tests that run a real process
// and check what another process recovers. It returns nil when name is
// empty, so a test binary can pass an environment variable through:
//
//	opts.Boundary = saga.KillAt(os.Getenv("CRASH_AT"))
func KillAt(name string) func(Boundary) error {
	if name == "" {
		return nil
	}
	return func(b Boundary) error {
		if b.String() == name {
			drill.Kill()
		}
		return nil
	}
}
