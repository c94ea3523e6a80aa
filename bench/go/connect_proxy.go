// Command connect_proxy is the Go baseline of the CONNECT proxy benchmark (standard library only).
//
// A net/http server that answers "CONNECT host:port" for the one target given with -allow:
// it dials the target, takes the client connection with http.Hijacker, writes
// "200 Connection established", forwards the bytes the server had already buffered, and then
// joins the two TCP connections with io.Copy both ways. io.Copy into a *net.TCPConn from a
// *net.TCPConn uses splice(2) on Linux. EOF on one side becomes CloseWrite on the other, an error closes
// both; the tunnel closes when both directions have ended.
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"time"
)

var allow = flag.String("allow", "", "the only host:port this proxy tunnels to")

func handle(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "This is a CONNECT proxy.", http.StatusMethodNotAllowed)
		return
	}
	if r.Host != *allow {
		http.Error(w, "CONNECT to "+r.Host+" is not allowed by this proxy.", http.StatusForbidden)
		return
	}
	upstream, err := net.DialTimeout("tcp", r.Host, 10*time.Second)
	if err != nil {
		http.Error(w, "Could not connect to "+r.Host+": "+err.Error(), http.StatusBadGateway)
		return
	}
	client, rw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		upstream.Close()
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer client.Close()
	defer upstream.Close()
	if _, err := rw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	if err := rw.Flush(); err != nil {
		return
	}
	if n := rw.Reader.Buffered(); n > 0 { // bytes read with the request head go first
		buffered, _ := rw.Reader.Peek(n)
		if _, err := upstream.Write(buffered); err != nil {
			return
		}
	}
	done := make(chan struct{}, 2)
	go pipe(upstream.(*net.TCPConn), client.(*net.TCPConn), done)
	go pipe(client.(*net.TCPConn), upstream.(*net.TCPConn), done)
	<-done
	<-done
}

// pipe copies src to dst until EOF, then half-closes dst; an error closes both.
func pipe(dst, src *net.TCPConn, done chan<- struct{}) {
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close()
	} else {
		_ = dst.CloseWrite()
	}
	done <- struct{}{}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "listen address")
	flag.Parse()
	log.Fatal(http.ListenAndServe(*listen, http.HandlerFunc(handle)))
}
