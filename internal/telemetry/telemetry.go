// Package telemetry sets up a Keel process's OpenTelemetry tracing: one
// tracer provider per process, named after it, exporting over OTLP/HTTP,
// and W3C trace context carried on every call so that one request through
// the edge and the services behind it is one trace.
//
// Tracing is off, at no cost, unless OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set and OTEL_SDK_DISABLED is not
// "true". The standard variables are honoured: OTEL_TRACES_SAMPLER and
// OTEL_TRACES_SAMPLER_ARG (default parentbased_always_on),
// OTEL_BSP_SCHEDULE_DELAY, OTEL_RESOURCE_ATTRIBUTES, and the exporter's
// own OTEL_EXPORTER_OTLP_* settings (headers, timeout, compression).
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/otelconnect"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Telemetry is one process's tracing. The zero value is tracing off.
type Telemetry struct {
	sdk        *sdktrace.TracerProvider // nil when off
	provider   trace.TracerProvider
	propagator propagation.TextMapPropagator
	server     connect.Interceptor
	client     connect.Interceptor
}

// Off is tracing turned off.
var Off = &Telemetry{}

// New sets up tracing for the process named service from the variables
// lookupEnv reads (the environment, normally). With tracing off it
// returns [Off].
func New(service string, lookupEnv func(string) (string, bool)) (*Telemetry, error) {
	get := func(k string) string { v, _ := lookupEnv(k); return strings.TrimSpace(v) }
	if strings.EqualFold(get("OTEL_SDK_DISABLED"), "true") {
		return Off, nil
	}
	var exporterOpts []otlptracehttp.Option
	switch {
	case get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "":
		// A signal endpoint is used as given.
		exporterOpts = append(exporterOpts, otlptracehttp.WithEndpointURL(get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")))
	case get("OTEL_EXPORTER_OTLP_ENDPOINT") != "":
		base := strings.TrimSuffix(get("OTEL_EXPORTER_OTLP_ENDPOINT"), "/")
		exporterOpts = append(exporterOpts, otlptracehttp.WithEndpointURL(base+"/v1/traces"))
	default:
		return Off, nil
	}
	sampler, err := samplerFrom(get("OTEL_TRACES_SAMPLER"), get("OTEL_TRACES_SAMPLER_ARG"))
	if err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	exporter, err := otlptracehttp.New(context.Background(), exporterOpts...)
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP exporter: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName(service)))
	if err != nil {
		res = resource.NewSchemaless(semconv.ServiceName(service))
	}
	var batch []sdktrace.BatchSpanProcessorOption
	if v := get("OTEL_BSP_SCHEDULE_DELAY"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 {
			return nil, fmt.Errorf("telemetry: OTEL_BSP_SCHEDULE_DELAY %q: want milliseconds", v)
		}
		batch = append(batch, sdktrace.WithBatchTimeout(time.Duration(ms)*time.Millisecond))
	}
	sdk := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exporter, batch...),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sampler),
	)
	t := &Telemetry{
		sdk:        sdk,
		provider:   sdk,
		propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
	}
	common := []otelconnect.Option{
		otelconnect.WithTracerProvider(sdk),
		otelconnect.WithPropagator(t.propagator),
		otelconnect.WithoutMetrics(), // Prometheus counts calls
	}
	// Keel services sit behind the edge and trust the trace context of
	// their callers, so that a request is one trace end to end.
	if t.server, err = otelconnect.NewInterceptor(append(common, otelconnect.WithTrustRemote())...); err != nil {
		return nil, fmt.Errorf("telemetry: server interceptor: %w", err)
	}
	if t.client, err = otelconnect.NewInterceptor(common...); err != nil {
		return nil, fmt.Errorf("telemetry: client interceptor: %w", err)
	}
	return t, nil
}

// samplerFrom reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG.
func samplerFrom(name, arg string) (sdktrace.Sampler, error) {
	ratio := func() (float64, error) {
		if arg == "" {
			return 1, nil
		}
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return 0, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG %q: want a ratio from 0 to 1", arg)
		}
		return r, nil
	}
	switch strings.ToLower(name) {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "traceidratio":
		r, err := ratio()
		return sdktrace.TraceIDRatioBased(r), err
	case "parentbased_traceidratio":
		r, err := ratio()
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(r)), err
	}
	return nil, fmt.Errorf("OTEL_TRACES_SAMPLER %q: want always_on, always_off, traceidratio or their parentbased_ forms", name)
}

// Enabled reports whether the process traces.
func (t *Telemetry) Enabled() bool { return t != nil && t.sdk != nil }

// Tracer returns a tracer of the process, a no-op one when tracing is off.
func (t *Telemetry) Tracer(name string) trace.Tracer {
	if !t.Enabled() {
		return noop.NewTracerProvider().Tracer(name)
	}
	return t.provider.Tracer(name)
}

// Propagator is the trace context propagator (W3C trace context and
// baggage), or nil when tracing is off.
func (t *Telemetry) Propagator() propagation.TextMapPropagator {
	if !t.Enabled() {
		return nil
	}
	return t.propagator
}

// ServerInterceptor returns the interceptor that traces the calls a
// Connect handler answers, and false when tracing is off.
func (t *Telemetry) ServerInterceptor() (connect.Interceptor, bool) {
	if !t.Enabled() {
		return nil, false
	}
	return t.server, true
}

// ClientInterceptor returns the interceptor that traces the calls a
// Connect client makes and sends their trace context, and false when
// tracing is off.
func (t *Telemetry) ClientInterceptor() (connect.Interceptor, bool) {
	if !t.Enabled() {
		return nil, false
	}
	return t.client, true
}

// Shutdown exports the spans still buffered and stops exporting.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if !t.Enabled() {
		return nil
	}
	if err := t.sdk.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("telemetry: shutdown: %w", err)
	}
	return nil
}
