// Command storefront runs the storefront service, the shop's
// backend-for-frontend: reads shaped for front ends, each combining the
// inventory, order, payment and user services. Its settings come from
// consul/kv/<env>/storefront.yaml, Consul KV keel/<env>/storefront/ when
// CONSUL_HTTP_ADDR is set, and KEEL_<KEY> environment variables; KEEL_ENV
// picks the environment (local, test or prod). It stores nothing.
package main

import (
	"github.com/keelplatform/keel/consul"
	storefrontservice "github.com/keelplatform/keel/services/storefront/service"
)

func main() { consul.Main(storefrontservice.Service()) }
