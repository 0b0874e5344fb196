package jaegertest_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdkresource "go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/keelplatform/keel/internal/jaegertest"
)

// TestExportAndReadBack exports a real two-span trace over OTLP/HTTP with
// the OpenTelemetry SDK, configured only through the environment that
// Jaeger.Env gives, and reads it back through the query API.
func TestExportAndReadBack(t *testing.T) {
	j := jaegertest.Start(t)
	for _, kv := range j.Env() {
		name, value, _ := strings.Cut(kv, "=")
		t.Setenv(name, value)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	exporter, err := otlptracehttp.New(ctx) // endpoint from OTEL_EXPORTER_OTLP_ENDPOINT
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSyncer(exporter),
		sdktrace.WithResource(sdkresource.NewSchemaless(attribute.String("service.name", "jaegertest-probe"))),
	)
	tracer := tp.Tracer("jaegertest")
	parentCtx, parent := tracer.Start(ctx, "probe.parent", trace.WithSpanKind(trace.SpanKindServer))
	_, child := tracer.Start(parentCtx, "probe.child", trace.WithAttributes(attribute.String("keel.probe", "yes")))
	child.End()
	parent.End()
	if err := tp.Shutdown(ctx); err != nil {
		t.Fatalf("export: %v", err)
	}

	traceID := parent.SpanContext().TraceID().String()
	spans, err := j.WaitTrace(ctx, traceID, 2)
	if err != nil {
		t.Fatalf("read back: %v\njaeger log:\n%s", err, j.Log())
	}
	if len(spans) != 2 {
		t.Fatalf("got %d spans, want 2: %+v", len(spans), spans)
	}
	byName := map[string]jaegertest.Span{}
	for _, s := range spans {
		byName[s.Operation] = s
	}
	p, c := byName["probe.parent"], byName["probe.child"]
	for _, check := range []struct{ what, got, want string }{
		{"parent trace id", p.TraceID, traceID},
		{"parent span id", p.SpanID, parent.SpanContext().SpanID().String()},
		{"parent's parent", p.ParentSpanID, ""},
		{"parent service", p.Service, "jaegertest-probe"},
		{"parent kind", p.Kind, "server"},
		{"child span id", c.SpanID, child.SpanContext().SpanID().String()},
		{"child's parent", c.ParentSpanID, parent.SpanContext().SpanID().String()},
		{"child service", c.Service, "jaegertest-probe"},
		{"child attribute", tagString(c.Tags["keel.probe"]), "yes"},
	} {
		if check.got != check.want {
			t.Errorf("%s: got %q, want %q", check.what, check.got, check.want)
		}
	}
	if p.Start.IsZero() || p.Duration < 0 || c.Start.Before(p.Start.Add(-time.Second)) {
		t.Errorf("odd timing: parent %v+%v, child %v+%v", p.Start, p.Duration, c.Start, c.Duration)
	}

	services, err := j.Client().Services(ctx)
	if err != nil || !slices.Contains(services, "jaegertest-probe") {
		t.Errorf("services: %v, %v", services, err)
	}
}

func TestUnknownTraceIsNotFound(t *testing.T) {
	j := jaegertest.Start(t)
	_, err := j.Trace(context.Background(), "0123456789abcdef0123456789abcdef")
	if !errors.Is(err, jaegertest.ErrTraceNotFound) {
		t.Fatalf("got %v, want ErrTraceNotFound", err)
	}
}

// TestStopStopsJaeger checks that Stop ends the process and frees its
// ports, and that the UI URL answered before.
func TestStopStopsJaeger(t *testing.T) {
	j := jaegertest.Start(t)
	res, err := http.Get(j.UIURL() + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/: %s", j.UIURL(), res.Status)
	}
	j.Stop()
	select {
	case <-j.Exited():
	default:
		t.Fatal("jaeger still running after Stop")
	}
	if _, err := http.Get(j.UIURL() + "/api/services"); err == nil {
		t.Fatal("jaeger still answers after Stop")
	}
	j.Stop() // a second Stop, as t.Cleanup does, is a no-op
}

func tagString(v any) string {
	s, _ := v.(string)
	return s
}
