// Package callpolicy is how a Keel process calls its peers: the one place
// that decides which instance a call goes to, whether and where it is
// sent again, how long it may take, and when an instance or a whole
// upstream is given a rest. The edge forwards every call through it, and
// internal/client builds every generated peer client on it, so both
// behave the same, whatever the protocol (Connect, gRPC, gRPC-Web).
//
// A [Transport] is an [http.RoundTripper] whose request URL names a
// logical service ("http://user/shop.user.v1.UserService/GetUser"). For
// each call it:
//
//   - gives the call a deadline (the caller's, else calls/timeout or
//     calls/timeouts/<service>) and sends the remaining time downstream
//     in grpc-timeout or connect-timeout-ms on every attempt;
//   - picks an instance by power of two choices over the healthy ones,
//     scored by outstanding calls weighted by a moving average of latency
//     and success (go-zero's p2c_ewma), a new instance warming in over
//     calls/balancer/slow_start; see [Balancer];
//   - passes each instance through its own circuit breaker
//     (failsafe-go circuitbreaker), fed only with what says the instance
//     itself is sick: it cannot be reached, it resets calls, it gives no
//     answer in time. An instance that answers, even unavailable because
//     a dependency of one method is down, is alive and stays in; its
//     refusals only lower its score. When every instance's breaker is
//     open, calls are sent to them anyway (panic routing, as Envoy does
//     below its healthy-panic threshold) rather than all refused unsent;
//   - throttles each method of an upstream whose calls mostly fail
//     (failsafe-go adaptivethrottler, the client-side throttling of
//     Google's SRE book), keyed by method as go-zero keys its breakers,
//     so one method failing for a dependency's sake leaves the others
//     alone;
//   - retries (failsafe-go retrypolicy, exponential backoff with jitter)
//     only on unavailable, or resource_exhausted with a retry hint, only
//     calls that are idempotent by contract or never reached a server,
//     always on another instance, within a retry budget that caps retries
//     at a share of calls over a window ([Budget]);
//   - hedges side-effect-free methods named in calls/hedge (failsafe-go
//     hedgepolicy), off by default.
//
// Decisions are taken on the call's Connect code as [rpcstatus] reads it
// from the response, so a gRPC error in trailers behind HTTP 200 counts
// the same as a Connect error status. A unary call's response is read in
// full before it is returned, which is what makes a failed answer
// retriable; streams are passed through as they come and are only sent
// again when they never reached a server.
//
// Unary Connect calls travel over synchronous HTTP/1.1 keep-alive pools
// ([h1pool]); gRPC, gRPC-Web and streams over h2c.
//
// failsafe-go's failsafehttp round tripper and handler are not used: the
// round tripper buffers every request body, which would hold a client
// stream forever, and the handler answers in plain text where a Connect
// or gRPC caller needs an error in its own protocol. Deadlines are
// context deadlines rather than failsafe-go timeouts, because the time
// left must travel downstream in the request's headers.
package callpolicy
