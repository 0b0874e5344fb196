// Command payment runs the payment service. Its settings come from
// consul/kv/<env>/payment.yaml, Consul KV keel/<env>/payment/ when
// CONSUL_HTTP_ADDR is set, and KEEL_<KEY> environment variables; KEEL_ENV
// picks the environment (local, test or prod). Secrets come from the
// environment only: KEEL_DATABASE_DSN.
package main

import (
	"github.com/keelplatform/keel/consul"
	paymentservice "github.com/keelplatform/keel/services/payment/service"
)

func main() { consul.Main(paymentservice.Service()) }
