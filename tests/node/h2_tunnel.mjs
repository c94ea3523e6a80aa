// Node's own http2 client against an HTTP/2 tunnel server (tests/test_tunnel_h2.py).
//   node h2_tunnel.mjs URL PATH CONNECTIONS STREAMS BYTES   extended CONNECT (:protocol connect-tcp) to PATH:
//       STREAMS tunnels on each of CONNECTIONS connections at once, each sending BYTES bytes (a pattern
//       of its own) and half-closing; prints {"connectProtocol", "goaways": [codes],
//       "tunnels": [{"status", "rst", "head": first line, "ok": the rest is the pattern, "body" if BYTES is 0}]}.
//   node h2_tunnel.mjs URL plain                            a plain CONNECT (authority form); prints its fate.
import http2 from "node:http2";

const [url, path, connections = "1", streams = "1", bytes = "0"] = process.argv.slice(2);
const goaways = [];

function pattern(index, size) {
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (index * 131 + i * 7 + (i >> 8)) & 0xff;
  return data;
}

function session() {
  const client = http2.connect(url);
  client.on("error", () => {});
  client.on("goaway", (code) => goaways.push(code));
  // Node allows :protocol once the server's SETTINGS say ENABLE_CONNECT_PROTOCOL.
  return new Promise((resolve, reject) => {
    client.once("remoteSettings", (settings) => resolve([client, settings.enableConnectProtocol]));
    client.once("error", reject);
  });
}

function tunnel(client, index, size) {
  return new Promise((resolve) => {
    const scheme = new URL(url).protocol.slice(0, -1);
    const stream = client.request({ ":method": "CONNECT", ":protocol": "connect-tcp", ":scheme": scheme, ":path": path });
    const chunks = [];
    let status = 0;
    stream.on("response", (headers) => (status = headers[":status"]));
    stream.on("data", (chunk) => chunks.push(chunk));
    stream.on("error", () => {});
    stream.on("close", () => {
      const all = Buffer.concat(chunks);
      const newline = all.indexOf(10);
      const body = all.subarray(newline + 1);
      resolve({ status, rst: stream.rstCode, head: all.subarray(0, newline).toString(), ok: body.equals(pattern(index, size)), body: size ? undefined : body.toString() });
    });
    const data = pattern(index, size);
    for (let offset = 0; offset < size; offset += 16384) stream.write(data.subarray(offset, offset + 16384));
    stream.end(size ? undefined : "half-closed");
  });
}

if (path === "plain") {
  const [client] = await session();
  const stream = client.request({ ":method": "CONNECT", ":authority": "127.0.0.1:9" });
  let status = 0;
  stream.on("response", (headers) => (status = headers[":status"]));
  stream.on("error", () => {});
  stream.on("close", () => {
    console.log(JSON.stringify({ status, rst: stream.rstCode }));
    client.close();
  });
} else {
  const sessions = await Promise.all(Array.from({ length: Number(connections) }, session));
  const results = await Promise.all(
    sessions.flatMap(([client], c) =>
      Array.from({ length: Number(streams) }, (_, s) => tunnel(client, c * Number(streams) + s, Number(bytes))),
    ),
  );
  for (const [client] of sessions) client.close();
  console.log(JSON.stringify({ connectProtocol: sessions.every(([, enabled]) => enabled), goaways, tunnels: results }));
}
