// Package consul is Keel's production discovery: it connects to a Consul
// agent ([NewClient], [ConfigFromEnv]), registers a process's instances
// with a gRPC health check the agent runs ([Registry]) and answers which
// instances of a service are passing, from memory kept fresh by blocking
// queries ([Resolver]).
//
// The directory also holds the scripts that get a Consul binary
// (get-consul.sh) and run a local dev agent (agent.sh); package consultest
// starts real agents for tests.
//
// Keel is tested against Consul 1.14, which rejects registration fields it
// does not know: this package only sets fields that version understands.
package consul
