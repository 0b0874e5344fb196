package platform_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/keelplatform/keel/cmd/keel/platform"
	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/testkit"
)

// connectHTTPStatus is the HTTP status the Connect protocol gives each
// code, which REST answers carry too.
var connectHTTPStatus = map[connect.Code]int{
	connect.CodeCanceled:           499,
	connect.CodeUnknown:            500,
	connect.CodeInvalidArgument:    400,
	connect.CodeDeadlineExceeded:   504,
	connect.CodeNotFound:           404,
	connect.CodeAlreadyExists:      409,
	connect.CodePermissionDenied:   403,
	connect.CodeResourceExhausted:  429,
	connect.CodeFailedPrecondition: 400,
	connect.CodeAborted:            409,
	connect.CodeOutOfRange:         400,
	connect.CodeUnimplemented:      501,
	connect.CodeInternal:           500,
	connect.CodeUnavailable:        503,
	connect.CodeDataLoss:           500,
	connect.CodeUnauthenticated:    401,
}

// shop is a running platform with the demo catalogue, and a customer
// logged in.
type shop struct {
	url      string
	p        *platform.Platform
	userID   string
	token    string
	password string
}

func startShop(t *testing.T) *shop {
	t.Helper()
	p, _ := startPlatform(t, platform.Options{Demo: true, IdentityKey: testIdentityKey})
	ctx := t.Context()
	s := &shop{url: "http://" + p.EdgeAddr(), p: p, password: "correct horse"}
	users := userv1connect.NewUserServiceClient(http.DefaultClient, s.url)
	reg, err := users.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{Email: "matrix@example.com", Password: s.password, DisplayName: "Matrix"}))
	if err != nil {
		t.Fatal(err)
	}
	login, err := users.Login(ctx, connect.NewRequest(&userv1.LoginRequest{Email: "matrix@example.com", Password: s.password}))
	if err != nil {
		t.Fatal(err)
	}
	s.userID, s.token = reg.Msg.GetUser().GetId(), login.Msg.GetAccessToken()
	return s
}

// rest sends a REST request as curl does (curl -d sends
// application/x-www-form-urlencoded) with the customer's token, and
// returns the status and body of the answer.
func (s *shop) rest(t *testing.T, method, path, body string) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, s.url+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: %d with content type %q: %s", method, path, res.StatusCode, ct, data)
	}
	return res.StatusCode, data
}

// restError is the JSON body of a REST error: a google.rpc.Status.
type restError struct {
	Code    *int   `json:"code"`
	Message string `json:"message"`
	Details []struct {
		Type string `json:"@type"`
	} `json:"details"`
}

// outcome is how one call ended in one protocol: its answer or its error.
type outcome struct {
	res     proto.Message
	code    connect.Code
	message string
	details []string // type URLs
}

// matrixCall is one method called in every protocol.
type matrixCall struct {
	name string
	// rest is the REST request for the caller tagged tag.
	rest func(tag string) (method, path, body string)
	// rpc makes the call with a generated client's protocol.
	rpc func(ctx context.Context, client *http.Client, url, tag string, opts ...connect.ClientOption) (proto.Message, error)
	// response is an empty answer, to decode REST's into.
	response func() proto.Message
	// code is the error every protocol must end with; 0 for none.
	code connect.Code
	// own marks a call whose answer differs by caller (it creates a user
	// of the caller's own): check verifies each answer instead of
	// comparing them.
	own   bool
	check func(t *testing.T, tag string, res proto.Message)
}

// unary makes the call procedure with a request built for the caller tag.
func unary[Req, Res any](procedure string, req func(tag string) *Req) func(context.Context, *http.Client, string, string, ...connect.ClientOption) (proto.Message, error) {
	return func(ctx context.Context, client *http.Client, url, tag string, opts ...connect.ClientOption) (proto.Message, error) {
		res, err := connect.NewClient[Req, Res](client, url+procedure, opts...).CallUnary(ctx, connect.NewRequest(req(tag)))
		if err != nil {
			return nil, err
		}
		return any(res.Msg).(proto.Message), nil
	}
}

// TestRESTMatchesEveryProtocol calls the same methods through the edge in
// REST, Connect JSON, gRPC and gRPC-Web: reads with path variables and
// query parameters, writes with bodies, and calls that fail in the
// service, its validation or its login. Every protocol gets the same data,
// or the same error: the same code, message and details, and for REST the
// HTTP status Connect gives the code, with a JSON body carrying code and
// message.
func TestRESTMatchesEveryProtocol(t *testing.T) {
	s := startShop(t)
	unknownOrder := uuid.NewString()
	calls := []matrixCall{
		{
			name: "GetItem",
			rest: func(string) (string, string, string) { return "GET", "/v1/items/KEEL-MUG", "" },
			rpc: unary[inventoryv1.GetItemRequest, inventoryv1.GetItemResponse](inventoryv1connect.InventoryServiceGetItemProcedure,
				func(string) *inventoryv1.GetItemRequest { return &inventoryv1.GetItemRequest{Sku: "KEEL-MUG"} }),
			response: func() proto.Message { return new(inventoryv1.GetItemResponse) },
			check: func(t *testing.T, _ string, res proto.Message) {
				item := res.(*inventoryv1.GetItemResponse).GetItem()
				if item.GetSku() != "KEEL-MUG" || item.GetPrice().GetAmountMinor() != 1200 || item.GetAvailable() != 100 {
					t.Fatalf("item %v", item)
				}
			},
		},
		{
			name: "ListItems",
			rest: func(string) (string, string, string) { return "GET", "/v1/items?page_size=2", "" },
			rpc: unary[inventoryv1.ListItemsRequest, inventoryv1.ListItemsResponse](inventoryv1connect.InventoryServiceListItemsProcedure,
				func(string) *inventoryv1.ListItemsRequest { return &inventoryv1.ListItemsRequest{PageSize: 2} }),
			response: func() proto.Message { return new(inventoryv1.ListItemsResponse) },
			check: func(t *testing.T, _ string, res proto.Message) {
				page := res.(*inventoryv1.ListItemsResponse)
				if len(page.GetItems()) != 2 || page.GetNextPageToken() == "" {
					t.Fatalf("page of %d items, next page token %q", len(page.GetItems()), page.GetNextPageToken())
				}
			},
		},
		{
			name: "Register",
			rest: func(tag string) (string, string, string) {
				return "POST", "/v1/users", fmt.Sprintf(`{"email":"%s@example.com","password":"correct horse","displayName":"%s"}`, tag, tag)
			},
			rpc: unary[userv1.RegisterRequest, userv1.RegisterResponse](userv1connect.UserServiceRegisterProcedure,
				func(tag string) *userv1.RegisterRequest {
					return &userv1.RegisterRequest{Email: tag + "@example.com", Password: "correct horse", DisplayName: tag}
				}),
			response: func() proto.Message { return new(userv1.RegisterResponse) },
			own:      true,
			check: func(t *testing.T, tag string, res proto.Message) {
				user := res.(*userv1.RegisterResponse).GetUser()
				if user.GetEmail() != tag+"@example.com" || user.GetDisplayName() != tag || user.GetCreateTime() == nil {
					t.Fatalf("registered %v", user)
				}
				// The account is the one the service keeps, as its owner
				// reads it.
				users := userv1connect.NewUserServiceClient(http.DefaultClient, s.url)
				login, err := users.Login(context.Background(), connect.NewRequest(&userv1.LoginRequest{Email: user.GetEmail(), Password: "correct horse"}))
				if err != nil {
					t.Fatalf("log in as %s: %v", user.GetEmail(), err)
				}
				got, err := userv1connect.NewUserServiceClient(http.DefaultClient, s.url, bearer(login.Msg.GetAccessToken())).GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: user.GetId()}))
				if err != nil || !proto.Equal(got.Msg.GetUser(), user) {
					t.Fatalf("registered %v, the service has %v (%v)", user, got, err)
				}
			},
		},
		{
			name: "Login with a wrong password",
			rest: func(string) (string, string, string) {
				return "POST", "/v1/users:login", `{"email":"matrix@example.com","password":"wrong horse"}`
			},
			rpc: unary[userv1.LoginRequest, userv1.LoginResponse](userv1connect.UserServiceLoginProcedure,
				func(string) *userv1.LoginRequest {
					return &userv1.LoginRequest{Email: "matrix@example.com", Password: "wrong horse"}
				}),
			response: func() proto.Message { return new(userv1.LoginResponse) },
			code:     connect.CodeUnauthenticated,
		},
		{
			name: "GetOrder of an unknown id",
			rest: func(string) (string, string, string) { return "GET", "/v1/orders/" + unknownOrder, "" },
			rpc: unary[orderv1.GetOrderRequest, orderv1.GetOrderResponse](orderv1connect.OrderServiceGetOrderProcedure,
				func(string) *orderv1.GetOrderRequest { return &orderv1.GetOrderRequest{OrderId: unknownOrder} }),
			response: func() proto.Message { return new(orderv1.GetOrderResponse) },
			code:     connect.CodeNotFound,
		},
		{
			name: "PlaceOrder of an invalid request",
			rest: func(string) (string, string, string) {
				return "POST", "/v1/orders", fmt.Sprintf(`{"idempotencyKey":"short","userId":"%s","lines":[{"sku":"KEEL-MUG","quantity":1}]}`, s.userID)
			},
			rpc: unary[orderv1.PlaceOrderRequest, orderv1.PlaceOrderResponse](orderv1connect.OrderServicePlaceOrderProcedure,
				func(string) *orderv1.PlaceOrderRequest {
					return &orderv1.PlaceOrderRequest{IdempotencyKey: "short", UserId: s.userID, Lines: []*orderv1.OrderLine{{Sku: "KEEL-MUG", Quantity: 1}}}
				}),
			response: func() proto.Message { return new(orderv1.PlaceOrderResponse) },
			code:     connect.CodeInvalidArgument,
		},
	}

	rpcProtocols := []struct {
		tag    string
		client *http.Client
		opts   []connect.ClientOption
	}{
		{"connect-json", http.DefaultClient, []connect.ClientOption{connect.WithProtoJSON(), bearer(s.token)}},
		{"grpc", testkit.H2CClient(), []connect.ClientOption{connect.WithGRPC(), bearer(s.token)}},
		{"grpc-web", http.DefaultClient, []connect.ClientOption{connect.WithGRPCWeb(), bearer(s.token)}},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			outcomes := map[string]outcome{}

			method, path, body := c.rest("rest")
			status, data := s.rest(t, method, path, body)
			if c.code == 0 {
				if status != http.StatusOK {
					t.Fatalf("REST %s %s: %d %s", method, path, status, data)
				}
				res := c.response()
				if err := protojson.Unmarshal(data, res); err != nil {
					t.Fatalf("REST answer %s: %v", data, err)
				}
				outcomes["rest"] = outcome{res: res}
			} else {
				var e restError
				if err := json.Unmarshal(data, &e); err != nil || e.Code == nil || e.Message == "" {
					t.Fatalf("REST %s %s: %d, error body %s without code and message (%v)", method, path, status, data, err)
				}
				if want := connectHTTPStatus[connect.Code(*e.Code)]; status != want {
					t.Fatalf("REST %s %s: HTTP %d for code %d, Connect gives %d", method, path, status, *e.Code, want)
				}
				o := outcome{code: connect.Code(*e.Code), message: e.Message}
				for _, d := range e.Details {
					o.details = append(o.details, d.Type)
				}
				outcomes["rest"] = o
			}

			for _, p := range rpcProtocols {
				res, err := c.rpc(context.Background(), p.client, s.url, p.tag, p.opts...)
				o := outcome{res: res}
				if err != nil {
					cerr, ok := err.(*connect.Error)
					if !ok {
						t.Fatalf("%s: %v", p.tag, err)
					}
					o = outcome{code: cerr.Code(), message: cerr.Message()}
					for _, d := range cerr.Details() {
						o.details = append(o.details, "type.googleapis.com/"+d.Type())
					}
				}
				outcomes[p.tag] = o
			}

			want := outcomes["connect-json"]
			for tag, got := range outcomes {
				if got.code != c.code {
					t.Fatalf("%s ended with %v %q, want %v", tag, got.code, got.message, c.code)
				}
				if c.check != nil && got.res != nil {
					c.check(t, tag, got.res)
				}
				if c.own {
					continue
				}
				if !proto.Equal(got.res, want.res) || got.message != want.message || strings.Join(got.details, ",") != strings.Join(want.details, ",") {
					t.Fatalf("%s and connect-json disagree:\n%s: %v %q %v\nconnect-json: %v %q %v", tag, tag, got.res, got.message, got.details, want.res, want.message, want.details)
				}
			}
			t.Logf("%d protocols agree: code %v %q", len(outcomes), want.code, want.message)
		})
	}
}

// TestRESTRefusesWhatIsNoCall: a REST request for a path no contract
// declares is a 404, and a body that is not the request's JSON is a 400
// invalid_argument naming the problem, never a 500; neither reaches a
// service.
func TestRESTRefusesWhatIsNoCall(t *testing.T) {
	s := startShop(t)
	var orderAddr string
	for _, svc := range s.p.Services() {
		if name, addr, _ := strings.Cut(svc, "@"); name == "order" {
			orderAddr = addr
		}
	}
	placeOrders := func() float64 {
		var n float64
		for series, v := range testkit.Scrape(t, "http://"+orderAddr+"/metrics") {
			if strings.HasPrefix(series, "keel_rpc_server_requests_total{") && strings.Contains(series, orderv1connect.OrderServicePlaceOrderProcedure) {
				n += v
			}
		}
		return n
	}
	before := placeOrders()
	valid := fmt.Sprintf(`{"idempotencyKey":"refusals-1","userId":"%s","lines":[{"sku":"KEEL-MUG","quantity":1}]}`, s.userID)
	cases := []struct {
		name, method, path, body string
		status                   int
		code                     connect.Code
		mentions                 []string
	}{
		{"unknown path", "GET", "/v1/nothing/here", "", 404, connect.CodeNotFound, []string{"/v1/nothing/here"}},
		{"unknown path under a route", "GET", "/v1/items/KEEL-MUG/reviews", "", 404, connect.CodeNotFound, []string{"/v1/items/KEEL-MUG/reviews"}},
		{"malformed json", "POST", "/v1/orders", valid[:len(valid)-12], 400, connect.CodeInvalidArgument, []string{"unmarshal request body"}},
		{"not json at all", "POST", "/v1/orders", "idempotencyKey=refusals-1", 400, connect.CodeInvalidArgument, []string{"unmarshal request body", "syntax error"}},
		{"wrong type", "POST", "/v1/orders", strings.Replace(valid, `"quantity":1`, `"quantity":"many"`, 1), 400, connect.CodeInvalidArgument, []string{"quantity"}},
		{"unknown query parameter", "GET", "/v1/items?page_sise=2", "", 400, connect.CodeInvalidArgument, []string{"page_sise"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, data := s.rest(t, tc.method, tc.path, tc.body)
			var e restError
			if err := json.Unmarshal(data, &e); err != nil || e.Code == nil {
				t.Fatalf("%d, body %s is no JSON error (%v)", status, data, err)
			}
			if status != tc.status || connect.Code(*e.Code) != tc.code {
				t.Fatalf("%d %s, want %d with code %v", status, data, tc.status, tc.code)
			}
			for _, m := range tc.mentions {
				if !strings.Contains(e.Message, m) {
					t.Fatalf("message %q does not mention %q", e.Message, m)
				}
			}
		})
	}
	if after := placeOrders(); after != before {
		t.Fatalf("refused requests reached the order service: PlaceOrder calls %v -> %v", before, after)
	}
	// The valid body is an order, which GET /v1/orders then lists among
	// the logged-in customer's.
	status, data := s.rest(t, "POST", "/v1/orders", valid)
	if status != http.StatusOK || !strings.Contains(string(data), "ORDER_STATUS_CONFIRMED") {
		t.Fatalf("place order: %d %s", status, data)
	}
	var placed struct {
		Order struct {
			OrderID string `json:"orderId"`
		} `json:"order"`
	}
	if err := json.Unmarshal(data, &placed); err != nil || placed.Order.OrderID == "" {
		t.Fatalf("place order answered %s: %v", data, err)
	}
	if status, data := s.rest(t, "GET", "/v1/orders", ""); status != http.StatusOK || !strings.Contains(string(data), placed.Order.OrderID) {
		t.Fatalf("GET /v1/orders: %d %s; want the order %s listed", status, data, placed.Order.OrderID)
	}
}

// TestRESTNeedsLoginAsTheContractSays: REST calls are held to the same
// rules as every other protocol: no token or a bad one is HTTP 401 with
// unauthenticated, an internal method 403 with permission_denied, a
// public one needs nothing; each as a JSON google.rpc.Status.
func TestRESTNeedsLoginAsTheContractSays(t *testing.T) {
	s := startShop(t)
	do := func(t *testing.T, method, path, auth, body string) (int, restError) {
		t.Helper()
		req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		data, _ := io.ReadAll(res.Body)
		var e restError
		if res.StatusCode != http.StatusOK {
			if err := json.Unmarshal(data, &e); err != nil || e.Code == nil {
				t.Fatalf("%s %s: %d %s is no JSON error", method, path, res.StatusCode, data)
			}
		}
		return res.StatusCode, e
	}
	charge := `{"idempotencyKey":"k-1","userId":"` + s.userID + `","orderId":"o-1","amount":{"currencyCode":"EUR","amountMinor":"100"}}`
	cases := []struct {
		name, method, path, auth, body string
		status                         int
		code                           connect.Code
		mentions                       string
	}{
		{"public, no token", "GET", "/v1/items/KEEL-MUG", "", "", 200, 0, ""},
		{"no token", "GET", "/v1/orders/" + s.userID, "", "", 401, connect.CodeUnauthenticated, "Authorization: Bearer"},
		{"forged token", "GET", "/v1/orders/" + s.userID, "Bearer " + s.token[:len(s.token)-4] + "AAAA", "", 401, connect.CodeUnauthenticated, "invalid or expired"},
		{"not a bearer", "GET", "/v1/orders/" + s.userID, "Basic bWU6cHc=", "", 401, connect.CodeUnauthenticated, "Bearer <token>"},
		{"internal method, logged in", "POST", "/v1/payments", "Bearer " + s.token, charge, 403, connect.CodePermissionDenied, "internal"},
		{"another user's account", "GET", "/v1/users/0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10", "Bearer " + s.token, "", 403, connect.CodePermissionDenied, "another user"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, e := do(t, tc.method, tc.path, tc.auth, tc.body)
			if status != tc.status {
				t.Fatalf("%d %+v, want %d", status, e, tc.status)
			}
			if tc.code != 0 && (connect.Code(*e.Code) != tc.code || !strings.Contains(e.Message, tc.mentions)) {
				t.Fatalf("%v %q, want %v mentioning %q", connect.Code(*e.Code), e.Message, tc.code, tc.mentions)
			}
		})
	}
}
