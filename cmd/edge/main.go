// Command edge runs Keel's edge, the platform's front door, on its own.
// Its settings come from consul/kv/<env>/edge.yaml, Consul KV
// keel/<env>/edge/ when CONSUL_HTTP_ADDR is set, and KEEL_<KEY>
// environment variables. Without Consul, KEEL_PEERS lists the services it
// routes to ("user=127.0.0.1:8081,...").
package main

import (
	"github.com/keelplatform/keel/cmd/keel/platform"
	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/edge"
)

func main() { consul.Main(edge.Service(platform.Contracts())) }
