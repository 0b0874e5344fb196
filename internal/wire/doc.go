// Package wire holds facts of the three protocols Keel serves (Connect,
// gRPC and gRPC-Web) that more than one part of the platform reads or
// writes: which header carries a call's timeout and how it is spelled,
// and which requests are unary Connect calls. Each fact lives here once,
// as connect-go keeps each protocol's facts in one place, so that the
// edge, the call policy and every Keel server read them alike.
package wire
