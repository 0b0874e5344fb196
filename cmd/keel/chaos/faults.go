package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
)

// Fault kinds the drill injects.
const (
	faultKillInstance = "kill-instance"   // SIGKILL one instance, restart it after a pause
	faultKillOrder    = "kill-order-saga" // SIGKILL an order instance while orders are in their sagas
	faultServiceDown  = "service-down"    // SIGKILL every instance of a service
	faultRedisKill    = "redis-kill"      // SIGKILL redis-server, start it again
	faultRedisPause   = "redis-pause"     // SIGSTOP redis-server, SIGCONT after
	faultConsulStop   = "consul-stop"     // stop the Consul agent, start it again
	faultNetLatency   = "net-latency"     // latency on the network to one instance
	faultNetReset     = "net-reset"       // connections to one instance reset
	faultNetBlackhole = "net-blackhole"   // one instance's network swallows every byte
	faultEdgeAbort    = "edge-abort"      // the edge aborts a share of one method's calls (Consul KV)
	faultEdgeDelay    = "edge-delay"      // the edge delays one method's calls (Consul KV)
)

// faultKinds in the order a schedule's first round covers them.
var faultKinds = []string{
	faultKillInstance, faultKillOrder, faultServiceDown, faultRedisKill, faultRedisPause,
	faultConsulStop, faultNetLatency, faultNetReset, faultNetBlackhole, faultEdgeAbort, faultEdgeDelay,
}

// fault is one fault of the schedule, planned and then as it happened.
type fault struct {
	Kind    string        `json:"kind"`
	Target  string        `json:"target"`
	At      time.Duration `json:"-"` // planned, from the drill's start
	Hold    time.Duration `json:"-"`
	Detail  string        `json:"detail"`
	Start   time.Time     `json:"start"`
	End     time.Time     `json:"end"` // when it was undone
	Error   string        `json:"error,omitempty"`
	Affects []string      `json:"affects"` // services whose calls may fail meanwhile
	Kinds   []string      `json:"affects_kinds,omitempty"`

	StartS float64 `json:"start_s"`
	EndS   float64 `json:"end_s"`
}

// plan makes the fault schedule from the seed: every kind once in a
// seeded order, then seeded picks, each held for a few seconds with a
// gap after, all within [from, until) and at most maxFaults.
func plan(seed uint64, from, until time.Duration, maxFaults, instances int) []fault {
	rng := rand.New(rand.NewPCG(seed, 0xfa17))
	order := append([]string(nil), faultKinds...)
	rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	var out []fault
	at := from
	span := until - from
	// Longer drills hold faults longer.
	holdMin, holdMax, gapMin, gapMax := 3*time.Second, 4500*time.Millisecond, 1500*time.Millisecond, 2500*time.Millisecond
	if span > 3*time.Minute {
		holdMin, holdMax, gapMin, gapMax = 5*time.Second, 15*time.Second, 5*time.Second, 15*time.Second
	}
	between := func(a, b time.Duration) time.Duration { return a + time.Duration(rng.Int64N(int64(b-a)+1)) }
	for i := 0; len(out) < maxFaults; i++ {
		kind := ""
		if i < len(order) {
			kind = order[i]
		} else {
			kind = faultKinds[rng.IntN(len(faultKinds))]
		}
		f := fault{Kind: kind, At: at, Hold: between(holdMin, holdMax)}
		svc := services[rng.IntN(len(services))]
		switch kind {
		case faultKillInstance, faultNetLatency, faultNetReset, faultNetBlackhole:
			f.Target = svc
			if kind == faultKillInstance {
				f.Target = fmt.Sprintf("%s-%d", svc, rng.IntN(instances))
			}
			f.Affects = []string{svc}
		case faultKillOrder:
			f.Target = fmt.Sprintf("order-%d", rng.IntN(instances))
			f.Affects = []string{"order"}
		case faultServiceDown:
			f.Target = []string{"order", "payment"}[rng.IntN(2)]
			f.Affects = []string{f.Target}
		case faultRedisKill, faultRedisPause:
			f.Target = "redis"
		case faultConsulStop:
			f.Target = "consul"
		case faultEdgeAbort:
			f.Target = "shop.inventory.v1.InventoryService.ListItems"
			f.Kinds = []string{kindCatalogue}
		case faultEdgeDelay:
			f.Target = "shop.storefront.v1.StorefrontService.GetProductPage"
			f.Kinds = []string{kindProduct}
		}
		if at+f.Hold > until {
			break
		}
		out = append(out, f)
		at += f.Hold + between(gapMin, gapMax)
	}
	return out
}

// inject carries out f on p, holding it for f.Hold, and undoes it. It
// returns when the fault has been undone (the processes restarted, the
// network healed).
func (p *platform) inject(ctx context.Context, f *fault) {
	f.Start = time.Now()
	defer func() { f.End = time.Now() }()
	hold := func() {
		select {
		case <-ctx.Done():
		case <-time.After(f.Hold):
		}
	}
	fail := func(err error) {
		if err != nil && f.Error == "" {
			f.Error = err.Error()
		}
	}
	switch f.Kind {
	case faultKillInstance, faultKillOrder:
		pr := p.find(f.Target)
		pr.kill()
		f.Detail = fmt.Sprintf("SIGKILL %s (%s), restarted after %v", f.Target, pr.addr, f.Hold.Round(time.Millisecond))
		hold()
		fail(pr.start(60 * time.Second))
	case faultServiceDown:
		for _, pr := range p.procs[f.Target] {
			pr.kill()
		}
		f.Detail = fmt.Sprintf("SIGKILL every %s instance, restarted after %v", f.Target, f.Hold.Round(time.Millisecond))
		hold()
		for _, pr := range p.procs[f.Target] {
			fail(pr.start(60 * time.Second))
		}
	case faultRedisKill:
		p.killRedis()
		f.Detail = fmt.Sprintf("SIGKILL redis-server, restarted (empty) after %v", f.Hold.Round(time.Millisecond))
		hold()
		fail(p.startRedis())
	case faultRedisPause:
		p.redisSignal(syscall.SIGSTOP)
		f.Detail = fmt.Sprintf("SIGSTOP redis-server for %v", f.Hold.Round(time.Millisecond))
		hold()
		p.redisSignal(syscall.SIGCONT)
	case faultConsulStop:
		p.agent.stop()
		f.Detail = fmt.Sprintf("Consul agent stopped (SIGTERM) for %v, restarted, KV pushed again", f.Hold.Round(time.Millisecond))
		hold()
		fail(p.agent.start())
		fail(p.pushConfig(ctx))
	case faultNetLatency, faultNetReset, faultNetBlackhole:
		px := p.proxies[f.Target]
		var toxic string
		switch f.Kind {
		case faultNetLatency:
			toxic = `{"name":"drill","type":"latency","stream":"downstream","attributes":{"latency":250,"jitter":100}}`
			f.Detail = "250ms±100ms latency on the answers of " + f.Target + "'s proxied instance"
		case faultNetReset:
			toxic = `{"name":"drill","type":"reset_peer","stream":"upstream","attributes":{"timeout":0}}`
			f.Detail = "every connection to " + f.Target + "'s proxied instance reset (TCP RST)"
		default:
			toxic = `{"name":"drill","type":"timeout","stream":"upstream","attributes":{"timeout":0}}`
			f.Detail = f.Target + "'s proxied instance blackholed (bytes swallowed, connections kept open)"
		}
		_, err := px.Toxics.AddToxicJson(strings.NewReader(toxic))
		fail(err)
		f.Detail += fmt.Sprintf(" for %v", f.Hold.Round(time.Millisecond))
		hold()
		fail(px.Toxics.RemoveToxic(context.Background(), "drill"))
		if f.Kind == faultNetBlackhole {
			// Connections opened while blackholed stay stuck in the
			// timeout toxic's goroutine: cut them so clients redial.
			px.Stop()
			fail(px.Start())
		}
	case faultEdgeAbort, faultEdgeDelay:
		key := "keel/test/edge/faults/" + f.Target
		value := `{abort_percent: 50, abort_code: unavailable}`
		f.Detail = "edge aborts 50% of " + f.Target + " with unavailable"
		if f.Kind == faultEdgeDelay {
			value = `{delay: 150ms, delay_percent: 100}`
			f.Detail = "edge delays every " + f.Target + " by 150ms"
		}
		_, err := p.client.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil)
		fail(err)
		f.Detail += fmt.Sprintf(" for %v (Consul KV %s)", f.Hold.Round(time.Millisecond), key)
		hold()
		_, err = p.client.KV().DeleteTree(key, nil)
		fail(err)
	}
}

// find returns the process named name ("order-1").
func (p *platform) find(name string) *proc {
	for _, pr := range p.allProcs() {
		if pr.name() == name {
			return pr
		}
	}
	panic("no process " + name)
}
