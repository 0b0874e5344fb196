// Command order runs the order service. Its settings come from
// consul/kv/<env>/order.yaml, Consul KV keel/<env>/order/ when
// CONSUL_HTTP_ADDR is set, and KEEL_<KEY> environment variables; KEEL_ENV
// picks the environment (local, test or prod). The PostgreSQL DSN, a
// secret, comes from KEEL_DATABASE_DSN only. KEEL_CRASH_AT, for crash
// tests only, names a saga boundary at which the process kills itself
// (see internal/drill and internal/saga).
package main

import (
	"github.com/keelplatform/keel/consul"
	orderservice "github.com/keelplatform/keel/services/order/service"
)

func main() { consul.Main(orderservice.Service()) }
