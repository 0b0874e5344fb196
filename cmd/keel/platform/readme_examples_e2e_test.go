package platform_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/keelplatform/keel/cmd/keel/platform"
)

// exampleTag tags a README example: an HTML comment
// "<!-- example: NAME -->" on the line before its ```sh fence.
var exampleTag = regexp.MustCompile(`^<!-- example: ([a-z0-9-]+) -->`)

// callsThePlatform matches a shell line that calls the platform: curl,
// buf curl, grpcurl.
var callsThePlatform = regexp.MustCompile(`(^|[\s(|;])(curl|grpcurl)\s`)

// defaultEdge is the edge's address in the README's examples.
const defaultEdge = "127.0.0.1:8080"

// readExamples returns the README's ```sh blocks tagged as examples, in
// order. A ```sh block that calls the platform (curl, buf curl, grpcurl)
// must be an example or a step of the walkthrough, so that none escapes
// the tests.
func readExamples(r io.Reader) ([]walkthroughStep, error) {
	var (
		examples []walkthroughStep
		tag      string // the example tag waiting for its block, or the walkthrough's
		open     *walkthroughStep
		n        int
	)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case open != nil && strings.HasPrefix(line, "```"):
			switch {
			case open.name == "" && callsThePlatform.MatchString(open.code):
				return nil, fmt.Errorf("README line %d: a ```sh block calls the platform but has no <!-- example: NAME --> tag, so no test runs it", open.line)
			case strings.HasPrefix(open.name, "example:"):
				open.name = strings.TrimPrefix(open.name, "example:")
				examples = append(examples, *open)
			}
			open = nil
		case open != nil:
			open.code += line + "\n"
		case exampleTag.MatchString(line):
			tag = "example:" + exampleTag.FindStringSubmatch(line)[1]
		case walkthroughTag.MatchString(line):
			tag = "walkthrough"
		case line == "```sh":
			open = &walkthroughStep{name: tag, line: n}
			tag = ""
		case strings.HasPrefix(line, "```"):
			if strings.HasPrefix(tag, "example:") {
				return nil, fmt.Errorf("README line %d: an example tag is followed by a %s block, want ```sh", n, line)
			}
			open, tag = &walkthroughStep{name: "other", line: n}, ""
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(examples) == 0 {
		return nil, fmt.Errorf("README: no block tagged <!-- example: NAME -->")
	}
	return examples, nil
}

// TestReadmeExamples runs every curl, buf curl, grpcurl and REST example
// of the README (the ```sh blocks tagged <!-- example: NAME -->), as
// written and in order, in one bash from the repository's root, against a
// platform with the demo catalogue whose edge stands in for
// 127.0.0.1:8080. What each example's comments show must be what it
// prints: every quoted key and value (but those abbreviated with "…"),
// and every comment line without quotes as a line of its output.
func TestReadmeExamples(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq", "grep"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the README examples need %s: %v (./scripts/test-deps.sh installs it)", tool, err)
		}
	}
	f, err := os.Open(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	examples, err := readExamples(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}

	p, _ := startPlatform(t, platform.Options{Demo: true})

	steps := []walkthroughStep{{name: "root", code: "cd ../../..\n"}}
	for _, e := range examples {
		if !strings.Contains(e.code, defaultEdge) {
			t.Fatalf("README line %d: example %q does not call the edge at %s", e.line, e.name, defaultEdge)
		}
		steps = append(steps, walkthroughStep{name: e.name, line: e.line, code: strings.ReplaceAll(e.code, defaultEdge, p.EdgeAddr())})
	}
	out := runWalkthrough(t, steps, nil)
	for _, e := range examples {
		t.Run(e.name, func(t *testing.T) {
			output := out[e.name]
			checkSamples(t, e, output)
			lines := map[string]bool{}
			for l := range strings.Lines(output) {
				lines[strings.TrimSpace(l)] = true
			}
			for l := range strings.Lines(e.code) {
				comment, ok := strings.CutPrefix(strings.TrimSpace(l), "# ")
				if !ok || strings.Contains(comment, `"`) || strings.Contains(comment, "…") {
					continue
				}
				if !lines[comment] && !strings.Contains(output, comment) {
					t.Errorf("README line %d, example %q shows %q, which its output lacks:\n%s", e.line, e.name, comment, output)
				}
			}
		})
	}
}

// TestGRPCToolsReachEveryService: grpcurl and buf curl, with nothing but
// the edge's reflection, list every routed service, describe it and call
// one of its methods; the answer is the service's own (data, or its
// not_found), so the call crossed the edge both tools' way.
func TestGRPCToolsReachEveryService(t *testing.T) {
	s := startShop(t)
	addr := strings.TrimPrefix(s.url, "http://")
	tool := func(t *testing.T, args ...string) string {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Dir = "../../.."
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	grpcurl := func(t *testing.T, args ...string) string {
		return tool(t, append([]string{"tool", "-modfile=tools/grpcurl/go.mod", "grpcurl", "-plaintext", "-H", "Authorization: Bearer " + s.token}, args...)...)
	}
	bufCurl := func(t *testing.T, args ...string) string {
		return tool(t, append([]string{"tool", "-modfile=tools/go.mod", "buf", "curl", "--protocol", "grpc", "--http2-prior-knowledge", "-H", "Authorization: Bearer " + s.token}, args...)...)
	}
	const unknown = "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"
	calls := map[string]struct{ method, body, want string }{
		"shop.inventory.v1.InventoryService":   {"GetItem", `{"sku":"KEEL-MUG"}`, `"name": "Keel mug"`},
		"shop.order.v1.OrderService":           {"GetOrder", `{"orderId":"` + unknown + `"}`, "order " + unknown + " not found"},
		"shop.payment.v1.PaymentService":       {"GetPayment", `{"paymentId":"` + unknown + `"}`, "not found"},
		"shop.storefront.v1.StorefrontService": {"GetProductPage", `{"sku":"KEEL-MUG"}`, `"inStock": true`},
		"shop.user.v1.UserService":             {"GetUser", `{"id":"` + s.userID + `"}`, `"displayName": "Matrix"`},
	}
	listed := grpcurl(t, addr, "list")
	bufListed := bufCurl(t, "--list-services", s.url)
	bufMethods := bufCurl(t, "--list-methods", s.url)
	var routed int
	for _, p := range platform.Services() {
		for _, svc := range p.Contracts {
			routed++
			t.Run(svc, func(t *testing.T) {
				c, ok := calls[svc]
				if !ok {
					t.Fatalf("no call for %s: add one", svc)
				}
				if !strings.Contains(listed, svc+"\n") || !strings.Contains(bufListed, svc+"\n") {
					t.Fatalf("%s not listed: grpcurl %q, buf curl %q", svc, listed, bufListed)
				}
				if d := grpcurl(t, addr, "describe", svc); !strings.Contains(d, "rpc "+c.method+" (") {
					t.Fatalf("grpcurl describe %s: %s", svc, d)
				}
				if !strings.Contains(bufMethods, svc+"/"+c.method+"\n") {
					t.Fatalf("buf curl --list-methods lacks %s/%s: %s", svc, c.method, bufMethods)
				}
				cmd := exec.Command("go", "tool", "-modfile=tools/grpcurl/go.mod", "grpcurl", "-plaintext", "-H", "Authorization: Bearer "+s.token, "-d", c.body, addr, svc+"/"+c.method)
				cmd.Dir = "../../.."
				out, _ := cmd.CombinedOutput() // not_found is an exit status
				if !strings.Contains(string(out), c.want) {
					t.Fatalf("grpcurl %s/%s: %s, want %q", svc, c.method, out, c.want)
				}
				bcmd := exec.Command("go", "tool", "-modfile=tools/go.mod", "buf", "curl", "--protocol", "grpc", "--http2-prior-knowledge",
					"-H", "Authorization: Bearer "+s.token, "-d", c.body, s.url+"/"+svc+"/"+c.method)
				bcmd.Dir = "../../.."
				bout, _ := bcmd.CombinedOutput()
				if want := c.want; !strings.Contains(string(bout), want) {
					t.Fatalf("buf curl %s/%s: %s, want %q", svc, c.method, bout, want)
				}
			})
		}
	}
	if routed != len(calls) {
		t.Fatalf("%d routed services, %d calls: keep them together", routed, len(calls))
	}
}
