// Node `ws` client for examples/websocket_by_hand.py: node ws_client.mjs ws://127.0.0.1:PORT/ws
// Runs each exchange in turn and prints one JSON object with what it saw; exits 1 on error.
import WebSocket from "ws";

const url = process.argv[2];
setTimeout(() => { console.error("timed out"); process.exit(2); }, 10000).unref();

const ws = new WebSocket(url);
const queue = [];
let waiting = null;
ws.on("message", (data, isBinary) => {
  const item = { data: isBinary ? [...data] : data.toString(), isBinary };
  if (waiting) { const w = waiting; waiting = null; w(item); } else queue.push(item);
});
const next = () => queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => { waiting = r; });
const event = (name) => new Promise((resolve) => ws.once(name, (...args) => resolve(args)));

try {
  await event("open");
  const seen = { extensions: ws.extensions };
  ws.send("héllo");
  seen.text = await next();
  ws.send(Buffer.from([0, 1, 2, 255]));
  seen.binary = await next();
  ws.send("ab", { fin: false });
  ws.send("cd", { fin: false });
  ws.send("ef", { fin: true });
  seen.fragmented = await next();
  const pong = event("pong");
  ws.ping("client ping");
  seen.pong = (await pong)[0].toString();
  const serverPing = event("ping");
  ws.send("ping");
  seen.serverPing = [(await serverPing)[0].toString(), (await next()).data, (await next()).data];
  const closed = event("close");
  ws.close(1000, "done");
  const [code, reason] = await closed;
  seen.close = { code, reason: reason.toString() };
  console.log(JSON.stringify(seen));
} catch (err) {
  console.error(err);
  process.exit(1);
}
