// Command inventory runs the inventory service. Its settings come from
// consul/kv/<env>/inventory.yaml, Consul KV keel/<env>/inventory/ when
// CONSUL_HTTP_ADDR is set, and KEEL_<KEY> environment variables; KEEL_ENV
// picks the environment (local, test or prod). The PostgreSQL DSN, a
// secret, comes from KEEL_DATABASE_DSN only.
package main

import (
	"github.com/keelplatform/keel/consul"
	inventoryservice "github.com/keelplatform/keel/services/inventory/service"
)

func main() { consul.Main(inventoryservice.Service()) }
