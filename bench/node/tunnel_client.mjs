// Tunnel throughput and idle tunnels against bench/tunnels.py's app, with Node's own clients.
//   node tunnel_client.mjs h2|http1 download|upload URL MIB   one tunnel; prints {"seconds", "bytes"}
//   node tunnel_client.mjs h2|http1 idle URL COUNT            COUNT idle tunnels (h2: 100 per connection);
//       prints {"open": COUNT} once all are answered, closes them when a line arrives on stdin.
import http2 from "node:http2";
import net from "node:net";
import readline from "node:readline";

const [mode, op, url, amount] = process.argv.slice(2);
const { hostname, port } = new URL(url);
const BLOCK = Buffer.alloc(1 << 20, 120);

function writeAll(stream, mib) {
  return new Promise((resolve) => {
    let left = mib;
    const pump = () => {
      while (left > 0) {
        left--;
        if (!stream.write(BLOCK)) return stream.once("drain", pump);
      }
      stream.end();
      resolve();
    };
    pump();
  });
}

// One tunnel: resolves with [readable/writable stream, bytes of the body already read] once answered.
function open(path, session) {
  if (mode === "h2") {
    const stream = session.request({ ":method": "CONNECT", ":protocol": "connect-tcp", ":scheme": "http", ":path": path });
    return new Promise((resolve, reject) => {
      stream.once("response", (headers) => (headers[":status"] === 200 ? resolve([stream, 0]) : reject(new Error(`${headers[":status"]}`))));
      stream.once("error", reject);
    });
  }
  const socket = net.connect(Number(port), hostname);
  socket.write(`GET ${path} HTTP/1.1\r\nHost: ${hostname}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n`);
  return new Promise((resolve, reject) => {
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      socket.off("data", onData);
      if (!head.subarray(0, 12).toString().endsWith("101")) return reject(new Error(head.toString()));
      resolve([socket, head.length - end - 4]);
    };
    socket.on("data", onData);
    socket.once("error", reject);
  });
}

function session() {
  if (mode !== "h2") return Promise.resolve(null);
  // Windows as a browser's (Chromium: 6 MiB per stream, 15 MiB per connection), not Node's 64 KiB.
  const client = http2.connect(url, { settings: { initialWindowSize: 6 << 20 } });
  return new Promise((resolve, reject) => {
    client.once("remoteSettings", () => resolve(client));
    client.once("connect", () => client.setLocalWindowSize(15 << 20));
    client.once("error", reject);
  });
}

if (op === "idle") {
  const count = Number(amount);
  const sessions = await Promise.all(Array.from({ length: mode === "h2" ? Math.ceil(count / 100) : 0 }, session));
  const tunnels = await Promise.all(Array.from({ length: count }, (_, i) => open("/idle", sessions[Math.floor(i / 100)])));
  console.log(JSON.stringify({ open: tunnels.length }));
  readline.createInterface({ input: process.stdin }).once("line", () => {
    for (const [stream] of tunnels) stream.destroy();
    for (const client of sessions) client.close();
    process.exit(0);
  });
} else {
  const mib = Number(amount);
  const client = await session();
  const started = process.hrtime.bigint();
  const [stream, already] = await open(op === "download" ? `/download?mib=${mib}` : "/upload", client);
  let bytes = already;
  let reply = "";
  stream.on("data", (chunk) => {
    bytes += chunk.length;
    if (op === "upload") reply += chunk.toString();
  });
  const ended = new Promise((resolve) => stream.once("end", resolve));
  if (op === "upload") await writeAll(stream, mib);
  else stream.end();
  await ended;
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (client) client.close();
  else stream.destroy();
  console.log(JSON.stringify({ seconds, bytes: op === "upload" ? Number(reply.trim()) : bytes }));
}
