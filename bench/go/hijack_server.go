// Command hijack_server is the Go baseline of asgi-hijack's benchmarks (standard library only).
//
// With -http it runs a net/http server: requests with "Upgrade: tcp" are hijacked
// (http.Hijacker), answered with 101 and then speak the stream protocol of bench/apps.py;
// other requests get "Hello, world!". With -raw it speaks the stream protocol directly
// on accepted TCP connections (the upstream of the CONNECT proxy benchmark).
//
// Stream protocol, one command per line until EOF: "echo" (echo until EOF), "sink N"
// (read N bytes, answer "ok\n"), "source N" (write N bytes).
package main

import (
	"bufio"
	"flag"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
)

var source = make([]byte, 256*1024)

func serveStream(r *bufio.Reader, c net.Conn) {
	defer c.Close()
	buf := make([]byte, 64*1024)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			return
		}
		switch fields[0] {
		case "echo":
			for {
				n, err := r.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		case "sink":
			left, _ := strconv.ParseInt(fields[1], 10, 64)
			for left > 0 {
				chunk := buf
				if left < int64(len(chunk)) {
					chunk = chunk[:left]
				}
				n, err := r.Read(chunk)
				if err != nil {
					return
				}
				left -= int64(n)
			}
			if _, err := c.Write([]byte("ok\n")); err != nil {
				return
			}
		case "source":
			left, _ := strconv.ParseInt(fields[1], 10, 64)
			for left > 0 {
				chunk := source
				if left < int64(len(chunk)) {
					chunk = chunk[:left]
				}
				if _, err := c.Write(chunk); err != nil {
					return
				}
				left -= int64(len(chunk))
			}
		default:
			return
		}
	}
}

func handle(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "tcp") {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("Hello, world!"))
		return
	}
	conn, rw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n")
	if err := rw.Flush(); err != nil {
		conn.Close()
		return
	}
	serveStream(rw.Reader, conn)
}

func serveRaw(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serveStream(bufio.NewReaderSize(c, 64*1024), c)
	}
}

func main() {
	httpAddr := flag.String("http", "", "listen address of the hijacking HTTP server")
	rawAddr := flag.String("raw", "", "listen address of the raw stream-protocol server")
	flag.Parse()
	if *rawAddr != "" {
		go serveRaw(*rawAddr)
	}
	if *httpAddr == "" {
		select {}
	}
	log.Fatal(http.ListenAndServe(*httpAddr, http.HandlerFunc(handle)))
}
