// Node's built-in http2 client with its default settings, for the HTTP/2 flow-control tests and benchmark.
//   node h2_client.mjs get URL                  GET; prints {"status", "bytes", "sha256", "seconds"}
//   node h2_client.mjs get-http1 URL            the same GET over HTTP/1.1 (node:http), to compare
import crypto from "node:crypto";
import http from "node:http";
import http2 from "node:http2";

const [mode, url] = process.argv.slice(2);
const started = process.hrtime.bigint();
const seconds = () => Number(process.hrtime.bigint() - started) / 1e9;
const client = mode === "get-http1" ? null : http2.connect(url);
client?.on("error", (error) => fail(error));

function fail(error) {
  console.error(String(error));
  process.exit(1);
}

function finish(report) {
  console.log(JSON.stringify({ ...report, seconds: seconds() }));
  client?.close();
}

function download(response) {
  const hash = crypto.createHash("sha256");
  let bytes = 0;
  response.on("data", (chunk) => {
    bytes += chunk.length;
    hash.update(chunk);
  });
  response.on("end", () => finish({ status: response.statusCode ?? response.status, bytes, sha256: hash.digest("hex") }));
}

if (mode === "get") {
  const target = new URL(url);
  const request = client.request({ ":path": target.pathname + target.search });
  request.on("response", (headers) => (request.status = headers[":status"]));
  request.on("error", fail);
  download(request);
} else if (mode === "get-http1") {
  http.get(url, download).on("error", fail);
} else {
  fail(`unknown mode ${mode}`);
}
