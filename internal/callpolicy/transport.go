package callpolicy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/adaptivethrottler"
	"github.com/failsafe-go/failsafe-go/hedgepolicy"
	"github.com/failsafe-go/failsafe-go/retrypolicy"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/h1pool"
	"github.com/keelplatform/keel/internal/rpcstatus"
	"github.com/keelplatform/keel/internal/shed"
	"github.com/keelplatform/keel/internal/wire"
)

// ErrThrottled is wrapped by the error of a call rejected locally because
// its upstream is failing; see [config.Throttle].
var ErrThrottled = errors.New("upstream is failing; call throttled")

// maxUnary is the largest unary response read in full; a larger one is
// passed on as it comes and cannot be retried.
const maxUnary = 4 << 20

// Transport sends calls to the instances of the logical service named by
// each request URL's host, under the call policy described in the package
// documentation. It is safe for concurrent use. Create it with
// [NewTransport].
type Transport struct {
	resolver discovery.Resolver
	metrics  *metrics
	h2c      *http.Transport
	settings atomic.Pointer[config.Calls]

	mu        sync.Mutex
	upstreams atomic.Pointer[map[string]*upstream]
}

var _ http.RoundTripper = (*Transport)(nil)

// upstream is one logical service and its policies.
type upstream struct {
	name     string
	balancer *balancer
	policy   atomic.Pointer[policy]

	retries   prometheus.Counter
	exhausted prometheus.Counter
	hedges    prometheus.Counter
	throttled prometheus.Counter
}

// policy is the failsafe-go executors of one upstream under one version
// of the settings: a throttle per method, behind which all of the
// upstream's methods share one retry policy and its budget.
type policy struct {
	settings *config.Calls
	timeout  time.Duration
	retries  retrypolicy.RetryPolicy[*outcome]
	// hedgeBudget is shared by the hedges of every method.
	hedgeBudget *Budget
	hedges      prometheus.Counter

	// methods holds each method's executor (*methodPolicy), built on its
	// first call; at most maxThrottled, the rest share other.
	methods sync.Map
	nMethod atomic.Int64
	other   methodPolicy
}

// methodPolicy is the executor of one method's calls: its own throttle,
// so that a method failing because of a dependency of the upstream's
// (an order view while the order service is down) is throttled alone,
// and the upstream's other methods go on as usual (go-zero keys its
// breakers by method for the same reason).
type methodPolicy struct {
	once sync.Once
	exec failsafe.Executor[*outcome]
	// hedged is set for a side-effect-free method named in calls/hedge.
	hedged bool
}

// maxThrottled bounds the methods of an upstream with a throttle of their
// own; calls to methods beyond it (a caller inventing procedure names)
// share one.
const maxThrottled = 1024

// NewTransport returns a transport resolving services through resolver,
// under settings, with its metrics (keel_client_*) registered in reg
// unless reg is nil.
func NewTransport(resolver discovery.Resolver, settings config.Calls, reg prometheus.Registerer) (*Transport, error) {
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	t := &Transport{
		resolver: resolver,
		metrics:  m,
		h2c: &http.Transport{
			Protocols: protocols,
			DialContext: (&net.Dialer{
				Timeout:   5 * time.Second,
				KeepAlive: 30 * time.Second,
			}).DialContext,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       settings.Pool.IdleTimeout,
			ResponseHeaderTimeout: settings.Pool.ResponseHeaderTimeout,
			HTTP2: &http.HTTP2Config{
				MaxReadFrameSize: 1 << 20,
				PingTimeout:      5 * time.Second,
				SendPingTimeout:  30 * time.Second,
			},
			DisableCompression: true,
		},
	}
	t.settings.Store(&settings)
	t.upstreams.Store(&map[string]*upstream{})
	return t, nil
}

// SetSettings applies new settings to the calls that start from now on;
// retry budgets and throttles start afresh, and so do breakers whose own
// settings changed.
func (t *Transport) SetSettings(s config.Calls) {
	t.settings.Store(&s)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, u := range *t.upstreams.Load() {
		u.policy.Store(t.newPolicy(u, &s))
		u.balancer.setSettings(&s)
	}
}

// CloseIdleConnections closes the pooled connections that carry no call.
func (t *Transport) CloseIdleConnections() {
	t.h2c.CloseIdleConnections()
	for _, u := range *t.upstreams.Load() {
		u.balancer.mu.Lock()
		for _, e := range u.balancer.byAddr {
			e.pool.CloseIdle()
		}
		u.balancer.mu.Unlock()
	}
}

// upstream returns the state of service, creating it on first use.
func (t *Transport) upstream(service string) *upstream {
	if u, ok := (*t.upstreams.Load())[service]; ok {
		return u
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	current := *t.upstreams.Load()
	if u, ok := current[service]; ok {
		return u
	}
	s := t.settings.Load()
	u := &upstream{
		name:      service,
		balancer:  newBalancer(service, t.resolver, s, t.metrics),
		retries:   t.metrics.retries.WithLabelValues(service),
		exhausted: t.metrics.exhausted.WithLabelValues(service),
		hedges:    t.metrics.hedges.WithLabelValues(service),
		throttled: t.metrics.throttled.WithLabelValues(service),
	}
	u.policy.Store(t.newPolicy(u, s))
	next := make(map[string]*upstream, len(current)+1)
	for k, v := range current {
		next[k] = v
	}
	next[service] = u
	t.upstreams.Store(&next)
	return u
}

// newPolicy builds the policy of u under s; its methods' executors are
// built on their first calls.
func (t *Transport) newPolicy(u *upstream, s *config.Calls) *policy {
	retry := retrypolicy.NewBuilder[*outcome]().
		HandleIf(func(o *outcome, _ error) bool { return o != nil && o.retryable }).
		WithMaxAttempts(s.Retry.MaxAttempts).
		WithBudget(NewBudget(s.Retry.BudgetRatio, s.Retry.BudgetMinPerSecond, s.Retry.BudgetWindow, u.exhausted.Inc)).
		ReturnLastFailure().
		OnRetry(func(failsafe.ExecutionEvent[*outcome]) { u.retries.Inc() })
	if s.Retry.Backoff > 0 {
		retry = retry.WithBackoff(s.Retry.Backoff, max(s.Retry.MaxBackoff, s.Retry.Backoff))
		if s.Retry.Jitter > 0 {
			retry = retry.WithJitterFactor(s.Retry.Jitter)
		}
	}
	p := &policy{
		settings: s,
		timeout:  s.TimeoutFor(u.name),
		retries:  retry.Build(),
		hedges:   u.hedges,
	}
	if len(s.Hedge) > 0 {
		p.hedgeBudget = NewBudget(s.Retry.BudgetRatio, s.Retry.BudgetMinPerSecond, s.Retry.BudgetWindow, u.exhausted.Inc)
	}
	return p
}

// method returns the policy of m's calls, building it on first use.
func (p *policy) method(m Method) *methodPolicy {
	var mp *methodPolicy
	if v, ok := p.methods.Load(m.Name); ok {
		mp = v.(*methodPolicy)
	} else if p.nMethod.Load() >= maxThrottled {
		mp = &p.other
	} else {
		v, loaded := p.methods.LoadOrStore(m.Name, &methodPolicy{})
		if !loaded {
			p.nMethod.Add(1)
		}
		mp = v.(*methodPolicy)
	}
	mp.once.Do(func() { p.build(mp, m) })
	return mp
}

// build makes mp's executor for m: a throttle of its own, the
// upstream's retries and, for a read-only method named in calls/hedge,
// hedging.
func (p *policy) build(mp *methodPolicy, m Method) {
	s := p.settings
	throttle := adaptivethrottler.NewBuilder[*outcome]().
		HandleIf(func(o *outcome, err error) bool {
			if o != nil {
				return o.overloaded()
			}
			return err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
		}).
		WithFailureRateThreshold(s.Throttle.FailureRate, uint(s.Throttle.MinCalls), s.Throttle.Window).
		WithMaxRejectionRate(s.Throttle.MaxRejectionRate).
		Build()
	if delay, ok := s.Hedge[m.Name]; ok && m.ReadOnly && mp != &p.other {
		hedge := hedgepolicy.NewBuilderWithDelay[*outcome](delay).
			WithBudget(p.hedgeBudget).
			OnHedge(func(failsafe.ExecutionEvent[*outcome]) { p.hedges.Inc() }).
			Build()
		mp.exec = failsafe.With[*outcome](throttle, p.retries, hedge)
		mp.hedged = true
		return
	}
	mp.exec = failsafe.With[*outcome](throttle, p.retries)
}

// RoundTrip implements [http.RoundTripper]. It sends req to an instance
// of the service named by req.URL.Host under the call policy. A unary
// call's response comes back read in full (its Body is a [*Body]); other
// calls' responses stream.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	u := t.upstream(req.URL.Host)
	p := u.policy.Load()
	m := methodOf(req)
	ctx := req.Context()
	if shed.IsLow(ctx) {
		// Work done for a low-priority call is low priority downstream too.
		req.Header[shed.PriorityHeader] = []string{shed.Low}
	}
	cancel := context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, p.timeout)
	}
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	if m.Unary && replayable && req.ContentLength >= 0 {
		defer cancel()
		return t.unary(ctx, u, p, req, m)
	}
	return t.stream(ctx, cancel, u, p, req)
}

// outcome is what one attempt of a unary call came to.
type outcome struct {
	ep      *endpoint
	res     *http.Response
	body    *Body
	err     error
	code    connect.Code
	hinted  bool // the server sent a retry hint
	notSent bool // the request cannot have reached a server
	// gaveUp: the caller went away or its deadline passed before an
	// answer: a verdict on the caller's patience, not on the upstream's
	// health, so the throttle does not count it.
	gaveUp    bool
	retryable bool
}

// overloaded reports whether the attempt says its upstream is failing or
// saturated, as the throttle counts it.
func (o *outcome) overloaded() bool {
	return o.err != nil && !o.gaveUp ||
		o.code == connect.CodeUnavailable || o.code == connect.CodeResourceExhausted
}

// release returns the outcome's buffer; its response must not be used
// after.
func (o *outcome) release() {
	if o != nil && o.body != nil {
		o.body.Close()
		o.body = nil
	}
}

// call is one unary call and the attempts it made.
type call struct {
	t   *Transport
	u   *upstream
	p   *policy
	req *http.Request
	m   Method
	h1  bool
	// hedging calls run attempts at once: each gets its own header and
	// a body read from buf.
	hedging bool
	buf     []byte
	// pref steers the attempts, when the caller gave a preference.
	pref *Preference

	mu       sync.Mutex
	tried    []*endpoint
	attempts int
	last     *outcome // the latest attempt's outcome, until returned
	done     bool
}

func (t *Transport) unary(ctx context.Context, u *upstream, p *policy, req *http.Request, m Method) (*http.Response, error) {
	c := &call{t: t, u: u, p: p, req: req, m: m, h1: wire.ConnectUnary(req), pref: preferenceOf(req.Context())}
	mp := p.method(m)
	if mp.hedged {
		c.hedging = true
		if req.Body != nil && req.Body != http.NoBody {
			// Attempts read the body at the same time: read it once.
			buf, err := io.ReadAll(req.Body)
			_ = req.Body.Close()
			if err != nil {
				return nil, fmt.Errorf("%s: read request body: %w", u.name, err)
			}
			c.buf = buf
		}
	}
	o, err := mp.exec.WithContext(ctx).GetWithExecution(c.attempt)
	c.mu.Lock()
	c.done = true
	if o == nil {
		o = c.last // the budget ran out, or the deadline passed in a backoff
	} else if c.last != o {
		c.last.release()
	}
	c.last = nil
	attempts := c.attempts
	c.mu.Unlock()
	if r := reportOf(req.Context()); r != nil {
		r.Attempts = attempts
		if o != nil && o.ep != nil {
			r.Instance = o.ep.addr
		}
	}
	switch {
	case o == nil && errors.Is(err, adaptivethrottler.ErrExceeded):
		u.throttled.Inc()
		return nil, fmt.Errorf("%s: %w", u.name, ErrThrottled)
	case o == nil && ctx.Err() != nil:
		return nil, fmt.Errorf("%s: %w", u.name, ctx.Err())
	case o == nil:
		return nil, fmt.Errorf("%s: %w", u.name, err)
	case o.err != nil:
		o.release()
		return nil, attemptError(u.name, o, ctx)
	}
	o.res.Body = o.body
	return o.res, nil
}

// attempt sends the call once, to an instance it has not tried.
func (c *call) attempt(exec failsafe.Execution[*outcome]) (*outcome, error) {
	c.mu.Lock()
	tried := c.tried
	c.mu.Unlock()
	ep, err := c.u.balancer.pick(tried, c.pref)
	if err != nil && exec.IsHedge() {
		// No instance left to hedge to: this hedge gives no answer, and
		// the attempts under way give theirs.
		<-exec.Canceled()
		return nil, exec.Context().Err()
	}
	if err != nil {
		c.mu.Lock()
		last := c.last
		c.mu.Unlock()
		if last != nil && errors.Is(err, errNoOther) {
			// A hedge or retry found no other instance: the call's answer
			// is the attempt before.
			last.retryable = false
			return last, nil
		}
		o := &outcome{err: err, code: connect.CodeUnavailable, notSent: true}
		c.keep(o)
		return o, nil
	}
	c.mu.Lock()
	c.tried = append(c.tried[:len(c.tried):len(c.tried)], ep)
	c.attempts++
	c.mu.Unlock()

	ctx := exec.Context()
	if at := c.p.settings.AttemptTimeout; at > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, at)
		defer cancel()
	}
	out := c.req
	if ctx != c.req.Context() || c.hedging || exec.Attempts() > 1 {
		// Attempts after the first, and concurrent ones, get a request of
		// their own; the first goes as it came.
		out = c.req.WithContext(ctx)
	}
	switch {
	case c.hedging:
		out.Header = c.req.Header.Clone()
		if c.buf != nil {
			out.Body = io.NopCloser(bytes.NewReader(c.buf))
		}
	case exec.Attempts() > 1 && c.req.GetBody != nil:
		body, err := c.req.GetBody()
		if err != nil {
			c.u.balancer.record(ep, c.req.URL.Path, 0, verdictCanceled, c.p.settings.Balancer.Decay)
			o := &outcome{ep: ep, err: fmt.Errorf("replay request body: %w", err), code: connect.CodeInternal}
			c.keep(o)
			return o, nil
		}
		out.Body = body
	}
	if !setTimeout(out.Header, ctx) {
		c.u.balancer.record(ep, c.req.URL.Path, 0, verdictCanceled, c.p.settings.Balancer.Decay)
		o := &outcome{ep: ep, err: context.DeadlineExceeded, code: connect.CodeDeadlineExceeded, notSent: true}
		c.keep(o)
		return o, nil
	}

	start := time.Now()
	ep.inflight.Add(1)
	var res *http.Response
	if c.h1 {
		res, err = ep.pool.RoundTrip(out)
		if err == nil {
			// The instance's latency leaves out connecting to it.
			start, _ = h1pool.SentAt(res)
		}
	} else {
		u := *out.URL
		u.Host = ep.addr
		out.URL = &u
		res, err = c.t.h2c.RoundTrip(withConnTime(out, &start))
	}
	var body *Body
	if err == nil {
		body, err = readBody(res)
	}
	ep.inflight.Add(-1)
	rtt := time.Since(start)

	o := &outcome{ep: ep, res: res, body: body}
	canceled := false
	switch {
	case err != nil && body != nil:
		// Too large to hold: passed on as it comes, never retried.
		o.res.Body = body
		o.code = 0
	case err != nil:
		o.err = err
		o.notSent = errors.Is(err, h1pool.ErrNotSent) || isDialError(err)
		switch {
		case exec.Context().Err() != nil || callerDeadlinePassed(exec.Context()):
			// The caller gave up or ran out of time, or another hedge won.
			canceled = true
			o.gaveUp = true
			o.code = connect.CodeCanceled
			if !errors.Is(exec.Context().Err(), context.Canceled) {
				o.code = connect.CodeDeadlineExceeded
			}
		case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
			o.code = connect.CodeDeadlineExceeded // the attempt's own timeout
		default:
			o.code = connect.CodeUnavailable
		}
	default:
		o.code = rpcstatus.Of(res, body.Bytes())
		_, o.hinted = rpcstatus.RetryAfter(res)
	}
	c.u.balancer.record(ep, c.req.URL.Path, rtt, verdictOf(o, canceled), c.p.settings.Balancer.Decay)

	safe := o.notSent || c.m.Idempotent &&
		(o.code == connect.CodeUnavailable || o.code == connect.CodeResourceExhausted && o.hinted ||
			o.code == connect.CodeDeadlineExceeded && expired(ctx) && !expired(exec.Context()))
	o.retryable = safe && !canceled && c.u.balancer.hasUntried(c.triedNow())
	c.keep(o)
	return o, nil
}

// verdictOf is what an attempt's outcome says of its instance: only an
// attempt that got no answer (unreachable, reset, timed out) says it is
// sick; an answer of unavailable or resource_exhausted says it declined.
func verdictOf(o *outcome, canceled bool) verdict {
	switch {
	case canceled:
		return verdictCanceled
	case o.err != nil && o.body == nil:
		return verdictSick
	case o.code == connect.CodeUnavailable || o.code == connect.CodeResourceExhausted:
		return verdictRefused
	}
	return verdictAnswered
}

// triedNow returns the endpoints the call has tried so far.
func (c *call) triedNow() []*endpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tried
}

// attemptError is the error a unary call returns when its last attempt
// got no answer. What the transport or the connection said is kept as
// text only: a caller (connect-go) must read the call's code as the call
// policy decided it, not guess it from an HTTP/2 reset code.
func attemptError(service string, o *outcome, ctx context.Context) error {
	switch {
	case callerDeadlinePassed(ctx) || errors.Is(o.err, context.DeadlineExceeded) && o.code == connect.CodeDeadlineExceeded:
		return fmt.Errorf("%s: %w (%v)", service, context.DeadlineExceeded, o.err)
	case errors.Is(o.err, context.Canceled) && ctx.Err() != nil:
		return fmt.Errorf("%s: %w", service, context.Canceled)
	case errors.Is(o.err, discovery.ErrNoInstances), errors.Is(o.err, ErrAllOpen):
		return o.err
	}
	where := service
	if o.ep != nil {
		where += " at " + o.ep.addr
	}
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s: %v", where, o.err))
}

// expired reports whether ctx is done or its deadline is behind us.
func expired(ctx context.Context) bool { return ctx.Err() != nil || callerDeadlinePassed(ctx) }

// callerDeadlinePassed reports whether ctx's deadline is behind us, which
// a connection deadline can notice a moment before ctx does.
func callerDeadlinePassed(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// keep records o as the call's latest outcome, releasing the one before;
// an outcome arriving after the call returned (a hedge that lost) is
// released at once.
func (c *call) keep(o *outcome) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		o.release()
		return
	}
	if c.last != nil && c.last != o {
		c.last.release()
	}
	c.last = o
}

// stream sends a call whose response is passed on as it comes: to one
// instance, or to another when it never reached the first.
func (t *Transport) stream(ctx context.Context, cancel context.CancelFunc, u *upstream, p *policy, req *http.Request) (*http.Response, error) {
	var tried []*endpoint
	var last *outcome // the latest attempt, which never reached its instance
	decay := p.settings.Balancer.Decay
	pref := preferenceOf(req.Context())
	for {
		ep, err := u.balancer.pick(tried, pref)
		if err != nil {
			cancel()
			if last != nil {
				// No instance left to try: the call's answer is the
				// attempt before, as for a unary call.
				return nil, attemptError(u.name, last, ctx)
			}
			return nil, err
		}
		tried = append(tried, ep)
		out := req.WithContext(ctx)
		url := *req.URL
		url.Host = ep.addr
		out.URL = &url
		if !setTimeout(out.Header, ctx) {
			u.balancer.record(ep, req.URL.Path, 0, verdictCanceled, decay)
			cancel()
			return nil, fmt.Errorf("%s: %w", u.name, context.DeadlineExceeded)
		}
		start := time.Now()
		ep.inflight.Add(1)
		res, err := t.h2c.RoundTrip(withConnTime(out, &start))
		if err != nil {
			ep.inflight.Add(-1)
			v := verdictSick
			if ctx.Err() != nil {
				v = verdictCanceled
			}
			u.balancer.record(ep, req.URL.Path, time.Since(start), v, decay)
			last = &outcome{ep: ep, err: err, code: connect.CodeUnavailable}
			if isDialError(err) && v != verdictCanceled && len(tried) < p.settings.Retry.MaxAttempts {
				continue // never reached the instance: the body is untouched
			}
			cancel()
			return nil, attemptError(u.name, last, ctx)
		}
		u.balancer.record(ep, req.URL.Path, time.Since(start), verdictAnswered, decay)
		if r := reportOf(req.Context()); r != nil {
			r.Instance, r.Attempts = ep.addr, len(tried)
		}
		res.Body = &streamBody{ReadCloser: res.Body, done: func() { ep.inflight.Add(-1); cancel() }}
		return res, nil
	}
}

// withConnTime returns req set to move *start to when its connection is
// ready, so that the instance's latency leaves out connecting.
func withConnTime(req *http.Request, start *time.Time) *http.Request {
	trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { *start = time.Now() }}
	return req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
}

// streamBody is a streamed response body that ends the call when closed.
type streamBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *streamBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

// isDialError reports whether err happened before the request could reach
// the instance.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// setTimeout writes the time left before ctx's deadline into the
// request's timeout header ([wire.WriteTimeout]). It reports false when
// no time is left.
func setTimeout(h http.Header, ctx context.Context) bool {
	deadline, ok := ctx.Deadline()
	if !ok {
		return true
	}
	left := time.Until(deadline)
	if left <= 0 {
		return false
	}
	wire.WriteTimeout(h, left)
	return true
}

// Body is a unary response read in full. Close returns its buffer to a
// pool: the bytes must not be used after.
type Body struct {
	buf     *bytes.Buffer
	r       bytes.Reader
	rest    io.ReadCloser // the unread rest of a response too large to hold
	limited io.LimitedReader
}

var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readBody reads a response's body in full into a pooled buffer, and
// closes it. A body larger than [maxUnary] comes back with the part read
// and the rest still to read, and an error saying so.
func readBody(res *http.Response) (*Body, error) {
	buf := buffers.Get().(*bytes.Buffer)
	buf.Reset()
	if res.ContentLength > 0 && res.ContentLength <= maxUnary {
		buf.Grow(int(res.ContentLength))
	}
	b := &Body{buf: buf, limited: io.LimitedReader{R: res.Body, N: maxUnary + 1}}
	_, err := buf.ReadFrom(&b.limited)
	b.limited.R = nil
	if err != nil {
		res.Body.Close()
		buffers.Put(buf)
		return nil, err
	}
	if buf.Len() > maxUnary {
		b.rest = res.Body
		b.r.Reset(buf.Bytes())
		return b, errTooLarge
	}
	if err := res.Body.Close(); err != nil {
		buffers.Put(buf)
		return nil, err
	}
	b.r.Reset(buf.Bytes())
	return b, nil
}

var errTooLarge = errors.New("response too large to hold")

// Bytes returns the whole body when it was read in full, or the part
// read so far of one too large to hold.
func (b *Body) Bytes() []byte {
	if b == nil || b.buf == nil {
		return nil
	}
	return b.buf.Bytes()
}

// Complete reports whether Bytes is the whole body.
func (b *Body) Complete() bool { return b.rest == nil }

// Read implements [io.Reader].
func (b *Body) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF && b.rest != nil {
		if n > 0 {
			return n, nil
		}
		return b.rest.Read(p)
	}
	return n, err
}

// Close implements [io.Closer]; it returns the buffer to the pool.
func (b *Body) Close() error {
	var err error
	if b.rest != nil {
		err = b.rest.Close()
		b.rest = nil
	}
	if b.buf != nil {
		if b.buf.Cap() <= 1<<20 {
			buffers.Put(b.buf)
		}
		b.buf = nil
		b.r.Reset(nil)
	}
	return err
}

// Report is filled by the transport with what became of a call, for access
// logs: give it with [WithReport].
type Report struct {
	// Instance is the address of the instance that answered (the last
	// one tried).
	Instance string
	// Attempts is how many attempts the call made.
	Attempts int
}

type reportKey struct{}

// WithReport asks the transport to fill r for the calls made with the
// returned context.
func WithReport(ctx context.Context, r *Report) context.Context {
	return context.WithValue(ctx, reportKey{}, r)
}

func reportOf(ctx context.Context) *Report {
	r, _ := ctx.Value(reportKey{}).(*Report)
	return r
}

// Preference steers a call's attempts to the instances whose discovery
// metadata Key is Value (with Exclude, to those where it is not, or
// missing), before the balancer picks among them: the others are used
// only when none of those can take an attempt (none known, or every
// breaker open), so a preference never fails a call that could be
// served. The edge routes canary traffic with it.
type Preference struct {
	// Key names the metadata, such as "version".
	Key string
	// Value is what the preferred instances carry under Key.
	Value string
	// Exclude prefers the instances that do not carry Value instead.
	Exclude bool
}

func (p *Preference) matches(e *endpoint) bool {
	var v string
	if m := e.meta.Load(); m != nil {
		v = (*m)[p.Key]
	}
	return (v == p.Value) != p.Exclude
}

type preferenceKey struct{}

// WithPreference steers the calls made with the returned context as p
// says.
func WithPreference(ctx context.Context, p Preference) context.Context {
	return context.WithValue(ctx, preferenceKey{}, &p)
}

func preferenceOf(ctx context.Context) *Preference {
	p, _ := ctx.Value(preferenceKey{}).(*Preference)
	return p
}
