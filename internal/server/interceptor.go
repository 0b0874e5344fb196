package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"connectrpc.com/connect"
)

// recoverPanic turns a panic in a handler into an internal error. The panic
// value and stack are logged; the caller sees only a generic message.
func (s *Server) recoverPanic(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
	s.logger.ErrorContext(ctx, "handler panicked",
		slog.String("procedure", spec.Procedure),
		slog.Any("panic", p),
		slog.String("stack", string(debug.Stack())))
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// accessLog logs every call: server faults at error level with their cause,
// everything else at debug level, so production logs stay quiet and cheap.
type accessLog struct {
	logger *slog.Logger
}

func newAccessLog(logger *slog.Logger) *accessLog {
	return &accessLog{logger: logger}
}

// WrapUnary implements [connect.Interceptor].
func (a *accessLog) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		res, err := next(ctx, req)
		a.log(ctx, req.Spec().Procedure, req.Peer().Protocol, start, err)
		return res, err
	}
}

// WrapStreamingClient implements [connect.Interceptor].
func (a *accessLog) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements [connect.Interceptor].
func (a *accessLog) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		a.log(ctx, conn.Spec().Procedure, conn.Peer().Protocol, start, err)
		return err
	}
}

func (a *accessLog) log(ctx context.Context, procedure, protocol string, start time.Time, err error) {
	code := "ok"
	level := slog.LevelDebug
	if err != nil {
		c := connect.CodeOf(err)
		code = c.String()
		if c == connect.CodeInternal || c == connect.CodeUnknown || c == connect.CodeDataLoss {
			level = slog.LevelError
		}
	}
	if !a.logger.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("procedure", procedure),
		slog.String("protocol", protocol),
		slog.String("code", code),
		slog.Duration("duration", time.Since(start)),
	}
	if err != nil && level == slog.LevelError {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	a.logger.LogAttrs(ctx, level, "rpc", attrs...)
}

// callerGone answers a call whose caller's deadline passed, or who went
// away, while its handler ran with deadline_exceeded or canceled, when the
// handler failed with internal or unknown: such a failure is nearly
// always the handler's own work (a database query, a peer call) cut short
// by the call's context, and reporting it as a server fault pages
// operators for a slow client and hides the real code from the caller.
type callerGone struct{}

// WrapUnary implements [connect.Interceptor].
func (callerGone) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		return res, codeOfGoneCaller(ctx, err)
	}
}

// WrapStreamingClient implements [connect.Interceptor].
func (callerGone) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements [connect.Interceptor].
func (callerGone) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return codeOfGoneCaller(ctx, next(ctx, conn))
	}
}

// codeOfGoneCaller returns err, or, when err is internal or unknown and
// ctx is done, the error of ctx's end in its own code.
func codeOfGoneCaller(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil {
		return err
	}
	if c := connect.CodeOf(err); c != connect.CodeInternal && c != connect.CodeUnknown {
		return err
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("the call's deadline passed before it was answered"))
	}
	return connect.NewError(connect.CodeCanceled, errors.New("the caller went away before the call was answered"))
}
