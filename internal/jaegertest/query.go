package jaegertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrTraceNotFound is returned by [Client.Trace] when Jaeger has no span
// of the trace (yet: spans reach the store a little after they are
// exported).
var ErrTraceNotFound = errors.New("jaegertest: trace not found")

// Span is one span of a trace as Jaeger's query API returns it.
type Span struct {
	// TraceID is the trace id, 32 lower-case hex digits, as
	// go.opentelemetry.io/otel/trace.TraceID.String prints it.
	TraceID string
	// SpanID is the span id, 16 lower-case hex digits.
	SpanID string
	// ParentSpanID is the span id of the parent (its CHILD_OF reference),
	// or "" for a root span.
	ParentSpanID string
	// Service is the service.name of the process that recorded the span.
	Service string
	// Operation is the span's name.
	Operation string
	// Kind is the span kind (server, client, internal, producer,
	// consumer), from the span.kind tag; "" if unset.
	Kind string
	// Start is when the span started, to the microsecond.
	Start time.Time
	// Duration is how long the span lasted, to the microsecond.
	Duration time.Duration
	// Links are the spans the span links to (Jaeger's FOLLOWS_FROM
	// references), as "traceID-spanID".
	Links []string
	// Tags are the span's attributes and the ones Jaeger derives from its
	// status and kind (otel.status_code, error, span.kind, ...), keyed by
	// name, with values as the JSON decoder gives them (string, float64,
	// bool).
	Tags map[string]any
}

// Client reads traces from a Jaeger query service's HTTP API, the one the
// Jaeger UI uses (/api/traces/{id}, /api/services).
type Client struct {
	// URL is the query service's base URL, http://host:port, as
	// [Jaeger.UIURL] returns it.
	URL string
	// HTTP is the client to use. Default: one with a 10s timeout.
	HTTP *http.Client
}

var defaultHTTP = &http.Client{Timeout: 10 * time.Second}

// Trace returns the spans of the trace with the given hex id in the order
// Jaeger returns them, or [ErrTraceNotFound].
func (c *Client) Trace(ctx context.Context, traceID string) ([]Span, error) {
	var res struct {
		Data []struct {
			TraceID string `json:"traceID"`
			Spans   []struct {
				TraceID       string `json:"traceID"`
				SpanID        string `json:"spanID"`
				OperationName string `json:"operationName"`
				References    []struct {
					RefType string `json:"refType"`
					TraceID string `json:"traceID"`
					SpanID  string `json:"spanID"`
				} `json:"references"`
				StartTime int64      `json:"startTime"` // microseconds since the epoch
				Duration  int64      `json:"duration"`  // microseconds
				Tags      []keyValue `json:"tags"`
				ProcessID string     `json:"processID"`
			} `json:"spans"`
			Processes map[string]struct {
				ServiceName string `json:"serviceName"`
			} `json:"processes"`
		} `json:"data"`
	}
	status, err := c.get(ctx, "/api/traces/"+url.PathEscape(traceID), &res)
	if status == http.StatusNotFound {
		return nil, fmt.Errorf("%w: %s", ErrTraceNotFound, traceID)
	}
	if err != nil {
		return nil, err
	}
	var spans []Span
	for _, tr := range res.Data {
		for _, s := range tr.Spans {
			span := Span{
				TraceID:   pad(s.TraceID, 32),
				SpanID:    pad(s.SpanID, 16),
				Service:   tr.Processes[s.ProcessID].ServiceName,
				Operation: s.OperationName,
				Start:     time.UnixMicro(s.StartTime),
				Duration:  time.Duration(s.Duration) * time.Microsecond,
				Tags:      make(map[string]any, len(s.Tags)),
			}
			for _, ref := range s.References {
				switch {
				case ref.RefType == "CHILD_OF" && span.ParentSpanID == "":
					span.ParentSpanID = pad(ref.SpanID, 16)
				case ref.RefType == "FOLLOWS_FROM":
					span.Links = append(span.Links, pad(ref.TraceID, 32)+"-"+pad(ref.SpanID, 16))
				}
			}
			for _, kv := range s.Tags {
				span.Tags[kv.Key] = kv.Value
			}
			span.Kind, _ = span.Tags["span.kind"].(string)
			spans = append(spans, span)
		}
	}
	if len(spans) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrTraceNotFound, traceID)
	}
	return spans, nil
}

// WaitTrace polls [Client.Trace] until the trace has at least n spans and
// returns them, or returns the last error once ctx is done.
func (c *Client) WaitTrace(ctx context.Context, traceID string, n int) ([]Span, error) {
	for {
		spans, err := c.Trace(ctx, traceID)
		if err == nil && len(spans) >= n {
			return spans, nil
		}
		if err == nil {
			err = fmt.Errorf("jaegertest: trace %s has %d spans, want %d", traceID, len(spans), n)
		}
		select {
		case <-ctx.Done():
			return spans, fmt.Errorf("%w (%w)", err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Services returns the names of the services Jaeger has spans of.
func (c *Client) Services(ctx context.Context) ([]string, error) {
	var res struct {
		Data []string `json:"data"`
	}
	if _, err := c.get(ctx, "/api/services", &res); err != nil {
		return nil, err
	}
	return res.Data, nil
}

type keyValue struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

// get fetches path and decodes its JSON into v. It returns the HTTP status
// (0 if there was no answer) and an error for anything but 200.
func (c *Client) get(ctx context.Context, path string, v any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(c.URL, "/")+path, nil)
	if err != nil {
		return 0, err
	}
	httpClient := c.HTTP
	if httpClient == nil {
		httpClient = defaultHTTP
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("GET %s: %w", req.URL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, fmt.Errorf("GET %s: %s: %s", req.URL, resp.Status, tail(string(body), 500))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return resp.StatusCode, fmt.Errorf("GET %s: decode: %w", req.URL, err)
	}
	return resp.StatusCode, nil
}

// pad left-pads a hex id with zeros to n digits: Jaeger drops the leading
// zero half of a 128-bit trace id.
func pad(id string, n int) string {
	if len(id) >= n {
		return id
	}
	return strings.Repeat("0", n-len(id)) + id
}
