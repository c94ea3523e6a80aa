// Command rpc_client calls the JSON-RPC service of examples/go_rpc.py the way Go's
// net/rpc DialHTTP reaches a Go server: it sends "CONNECT /_goRPC_ HTTP/1.0", expects
// "200 Connected to Go RPC", then speaks net/rpc/jsonrpc on the same connection.
//
//	go run . -addr 127.0.0.1:8000
//
// It checks every answer and exits non-zero on the first wrong one.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/rpc"
	"net/rpc/jsonrpc"
	"strings"
	"time"
)

// Args and Quotient match the Arith service of Go's net/rpc documentation.
type Args struct{ A, B int }

type Quotient struct{ Quo, Rem int }

// bufferedConn reads through the bufio.Reader used for the CONNECT response, so that
// no byte the server sent after it is lost.
type bufferedConn struct {
	io.Reader
	net.Conn
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.Reader.Read(p) }

func dialHTTP(addr, path string) (*rpc.Client, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "CONNECT "+path+" HTTP/1.0\n\n") // exactly what rpc.DialHTTPPath sends
	reader := bufio.NewReader(conn)
	resp, err := http.ReadResponse(reader, &http.Request{Method: "CONNECT"})
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.Status != "200 Connected to Go RPC" || resp.Proto != "HTTP/1.0" {
		conn.Close()
		return nil, fmt.Errorf("unexpected HTTP response: %s %s", resp.Proto, resp.Status)
	}
	return jsonrpc.NewClient(bufferedConn{reader, conn}), nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8000", "host:port of examples/go_rpc.py")
	flag.Parse()
	client, err := dialHTTP(*addr, "/_goRPC_")
	if err != nil {
		log.Fatalf("dial: %v", err)
	}
	defer client.Close()

	var product int
	if err := client.Call("Arith.Multiply", &Args{7, 8}, &product); err != nil || product != 56 {
		log.Fatalf("Arith.Multiply 7*8: %d, %v", product, err)
	}
	var quotient Quotient
	if err := client.Call("Arith.Divide", &Args{17, 5}, &quotient); err != nil || quotient != (Quotient{3, 2}) {
		log.Fatalf("Arith.Divide 17/5: %+v, %v", quotient, err)
	}
	err = client.Call("Arith.Divide", &Args{1, 0}, &quotient)
	if !errors.As(err, new(rpc.ServerError)) || err.Error() != "divide by zero" {
		log.Fatalf("Arith.Divide 1/0: want ServerError \"divide by zero\", got %#v", err)
	}
	err = client.Call("Nope.Missing", &Args{}, &product)
	if !errors.As(err, new(rpc.ServerError)) || !strings.Contains(err.Error(), "can't find service") {
		log.Fatalf("Nope.Missing: want ServerError \"can't find service\", got %#v", err)
	}

	// Many calls in flight at once on the one connection, answered by id.
	calls := make([]*rpc.Call, 50)
	for i := range calls {
		calls[i] = client.Go("Arith.Multiply", &Args{i, i + 1}, new(int), nil)
	}
	for i, call := range calls {
		<-call.Done
		if call.Error != nil || *call.Reply.(*int) != i*(i+1) {
			log.Fatalf("concurrent Arith.Multiply %d*%d: %v, %v", i, i+1, *call.Reply.(*int), call.Error)
		}
	}
	fmt.Printf("ok: %d calls\n", 4+len(calls))
}
