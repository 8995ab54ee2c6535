// opa-envoy: an Envoy ext_authz gRPC server that decides with OPA (Rego), for zmesh's interop
// tests of ext_authz clients.
//
// It follows opa-envoy-plugin's contract, so a policy written for that plugin runs here
// unchanged: the input is the CheckRequest as JSON (proto field names) under `attributes`, plus
// `parsed_path` and `parsed_query`; the query (default `data.envoy.authz.allow`) yields either a
// boolean or an object with `allowed`, `headers`, `response_headers_to_add`, `body` and
// `http_status`. It exists because the plugin's module is not served by the Go module proxy this
// project builds from; it is built from OPA's published module and Envoy's published Go types.
//
// Any error (policy, evaluation, unexpected result) is a deny: the tests that use it check that
// clients fail closed, so the server must never turn an error into an allow.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/open-policy-agent/opa/v1/rego"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
)

type server struct {
	authv3.UnimplementedAuthorizationServer
	query rego.PreparedEvalQuery
}

// decision is what the policy said, in the plugin's vocabulary.
type decision struct {
	allowed bool
	// headers go upstream on an allow and to the client on a deny.
	headers         [][2]string
	responseHeaders [][2]string
	body            string
	httpStatus      int32
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9191", "gRPC address to listen on")
	policy := flag.String("policy", "", "Rego policy file")
	query := flag.String("query", "data.envoy.authz.allow", "the Rego query that decides")
	flag.Parse()
	if *policy == "" {
		log.Fatal("-policy FILE is required")
	}
	source, err := os.ReadFile(*policy)
	if err != nil {
		log.Fatalf("cannot read the policy: %v", err)
	}
	prepared, err := rego.New(rego.Query(*query), rego.Module(*policy, string(source))).PrepareForEval(context.Background())
	if err != nil {
		log.Fatalf("the policy does not compile: %v", err)
	}
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("cannot listen on %s: %v", *addr, err)
	}
	grpcServer := grpc.NewServer()
	authv3.RegisterAuthorizationServer(grpcServer, &server{query: prepared})
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	go func() {
		<-stop
		grpcServer.GracefulStop()
	}()
	// The harness waits for this line before it sends the first Check.
	fmt.Printf("listening on %s\n", listener.Addr())
	if err := grpcServer.Serve(listener); err != nil {
		log.Fatalf("serve: %v", err)
	}
}

func (s *server) Check(ctx context.Context, request *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	decided, err := s.decide(ctx, request)
	if err != nil {
		log.Printf("deny: %v", err)
		decided = decision{allowed: false, httpStatus: 403}
	}
	return decided.response(), nil
}

func (s *server) decide(ctx context.Context, request *authv3.CheckRequest) (decision, error) {
	input, err := policyInput(request)
	if err != nil {
		return decision{}, err
	}
	results, err := s.query.Eval(ctx, rego.EvalInput(input))
	if err != nil {
		return decision{}, fmt.Errorf("evaluation: %w", err)
	}
	if len(results) == 0 || len(results[0].Expressions) == 0 {
		// An undefined result is a deny, as in the plugin.
		return decision{allowed: false, httpStatus: 403}, nil
	}
	return readDecision(results[0].Expressions[0].Value)
}

func policyInput(request *authv3.CheckRequest) (map[string]any, error) {
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(request)
	if err != nil {
		return nil, fmt.Errorf("encoding the request: %w", err)
	}
	var input map[string]any
	if err := json.Unmarshal(raw, &input); err != nil {
		return nil, fmt.Errorf("decoding the request: %w", err)
	}
	path := request.GetAttributes().GetRequest().GetHttp().GetPath()
	parsed, err := url.Parse(path)
	if err != nil {
		return nil, fmt.Errorf("the path %q does not parse: %w", path, err)
	}
	segments := []any{}
	for _, segment := range strings.Split(strings.TrimPrefix(parsed.Path, "/"), "/") {
		segments = append(segments, segment)
	}
	query := map[string]any{}
	for key, values := range parsed.Query() {
		list := make([]any, 0, len(values))
		for _, value := range values {
			list = append(list, value)
		}
		query[key] = list
	}
	input["parsed_path"] = segments
	input["parsed_query"] = query
	return input, nil
}

func readDecision(value any) (decision, error) {
	switch result := value.(type) {
	case bool:
		return decision{allowed: result, httpStatus: 403}, nil
	case map[string]any:
		allowed, ok := result["allowed"].(bool)
		if !ok {
			return decision{}, fmt.Errorf("the result has no boolean `allowed`: %v", result)
		}
		out := decision{allowed: allowed, httpStatus: 403}
		var err error
		if out.headers, err = readHeaders(result["headers"]); err != nil {
			return decision{}, err
		}
		if out.responseHeaders, err = readHeaders(result["response_headers_to_add"]); err != nil {
			return decision{}, err
		}
		if body, present := result["body"]; present {
			text, ok := body.(string)
			if !ok {
				return decision{}, fmt.Errorf("`body` is not a string: %v", body)
			}
			out.body = text
		}
		if status, present := result["http_status"]; present {
			number, ok := status.(json.Number)
			if !ok {
				return decision{}, fmt.Errorf("`http_status` is not a number: %v", status)
			}
			code, err := number.Int64()
			if err != nil || code < 100 || code > 599 {
				return decision{}, fmt.Errorf("`http_status` %v is not an HTTP status", status)
			}
			out.httpStatus = int32(code)
		}
		return out, nil
	default:
		return decision{}, fmt.Errorf("the result is neither a boolean nor an object: %v", value)
	}
}

// readHeaders takes a map of name to a string or a list of strings, in name order so responses
// are reproducible.
func readHeaders(value any) ([][2]string, error) {
	if value == nil {
		return nil, nil
	}
	fields, ok := value.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("headers are not an object: %v", value)
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	var out [][2]string
	for _, name := range names {
		switch header := fields[name].(type) {
		case string:
			out = append(out, [2]string{name, header})
		case []any:
			for _, item := range header {
				text, ok := item.(string)
				if !ok {
					return nil, fmt.Errorf("header %s has a value that is not a string: %v", name, item)
				}
				out = append(out, [2]string{name, text})
			}
		default:
			return nil, fmt.Errorf("header %s is neither a string nor a list: %v", name, header)
		}
	}
	return out, nil
}

func headerOptions(headers [][2]string) []*corev3.HeaderValueOption {
	options := make([]*corev3.HeaderValueOption, 0, len(headers))
	for _, header := range headers {
		options = append(options, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: header[0], Value: header[1]}})
	}
	return options
}

func (d decision) response() *authv3.CheckResponse {
	if d.allowed {
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers:              headerOptions(d.headers),
				ResponseHeadersToAdd: headerOptions(d.responseHeaders),
			}},
		}
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code.Code_PERMISSION_DENIED)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(d.httpStatus)},
			Headers: headerOptions(d.headers),
			Body:    d.body,
		}},
	}
}
