// Command user runs the user service. Its settings come from
// consul/kv/<env>/user.yaml, Consul KV keel/<env>/user/ when
// CONSUL_HTTP_ADDR is set, and KEEL_<KEY> environment variables; KEEL_ENV
// picks the environment (local, test or prod). Secrets come from the
// environment only: KEEL_TOKEN_KEY (required) and KEEL_DATABASE_DSN.
package main

import (
	"github.com/keelplatform/keel/consul"
	userservice "github.com/keelplatform/keel/services/user/service"
)

func main() { consul.Main(userservice.Service()) }
