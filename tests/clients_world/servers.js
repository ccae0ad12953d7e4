// Real upstream servers for tests/clients_sandbox.rs, run by the host's
// node inside the test's network namespace: a gRPC server (@grpc/grpc-js,
// TLS from the test CA, h2 by ALPN) on 50051, an HTTPS server on 443 (for
// Host git.test a smart-HTTP git server: the host's `git http-backend` run
// per request as CGI over the bare repositories in GIT_ROOT, pushes
// allowed), and a WebSocket server (ws) on plain HTTP port 80. Every
// request is appended to SEEN (one line: "grpc PATH", "https PATH",
// "git METHOD PATH?QUERY", "ws PATH", "wsmsg TEXT").
// Prints "ready" when all listen; exits when stdin closes (the test ended).
// Usage: node servers.js CERT_PEM KEY_PEM SEEN GIT_ROOT
"use strict";
const fs = require("fs");
const https = require("https");
const http = require("http");
const { spawn } = require("child_process");
const grpc = require("@grpc/grpc-js");
const { WebSocketServer } = require("ws");

const [cert, key, seenFile, gitRoot] = process.argv.slice(2);
const certPem = fs.readFileSync(cert);
const keyPem = fs.readFileSync(key);
const seen = (line) => fs.appendFileSync(seenFile, line.replace(/\s+/g, " ") + "\n");

// gRPC: a generic service, bytes in and bytes out (no .proto).
const id = (b) => b;
const method = (name) => ({
  path: "/moat.Echo/" + name,
  requestStream: false,
  responseStream: false,
  requestSerialize: id,
  requestDeserialize: id,
  responseSerialize: id,
  responseDeserialize: id,
});
const server = new grpc.Server();
server.addService(
  { Say: method("Say"), Forbidden: method("Forbidden") },
  {
    Say: (call, cb) => { seen("grpc /moat.Echo/Say"); cb(null, Buffer.concat([Buffer.from("echo:"), call.request])); },
    Forbidden: (call, cb) => { seen("grpc /moat.Echo/Forbidden"); cb(null, Buffer.from("should never arrive")); },
  },
);

let pending = 3;
const up = () => { if (--pending === 0) console.log("ready"); };
server.bindAsync(
  "0.0.0.0:50051",
  grpc.ServerCredentials.createSsl(null, [{ private_key: keyPem, cert_chain: certPem }], false),
  (err) => { if (err) { console.error("grpc bind: " + err.message); process.exit(1); } up(); },
);

// `git http-backend` as CGI: the request's body streamed to its stdin
// (gzip'd bodies decoded by http-backend itself, told by
// HTTP_CONTENT_ENCODING), its header lines (Status:, Content-Type:, ...)
// parsed off its stdout, the rest streamed back. REMOTE_USER set: receive-
// pack (push) is served. A failure is a 500 whose body says why.
function git(req, res) {
  seen("git " + req.method + " " + req.url);
  const q = req.url.indexOf("?");
  const env = {
    PATH: process.env.PATH,
    GIT_PROJECT_ROOT: gitRoot,
    GIT_HTTP_EXPORT_ALL: "1",
    GATEWAY_INTERFACE: "CGI/1.1",
    PATH_INFO: decodeURIComponent(q < 0 ? req.url : req.url.slice(0, q)),
    QUERY_STRING: q < 0 ? "" : req.url.slice(q + 1),
    REQUEST_METHOD: req.method,
    CONTENT_TYPE: req.headers["content-type"] || "",
    REMOTE_ADDR: req.socket.remoteAddress || "",
    REMOTE_USER: "agent",
  };
  if (req.headers["content-length"] !== undefined) env.CONTENT_LENGTH = req.headers["content-length"];
  if (req.headers["content-encoding"] !== undefined) env.HTTP_CONTENT_ENCODING = req.headers["content-encoding"];
  if (req.headers["git-protocol"] !== undefined) env.HTTP_GIT_PROTOCOL = req.headers["git-protocol"];
  const cgi = spawn("git", ["http-backend"], { env, stdio: ["pipe", "pipe", "pipe"] });
  let errText = "";
  cgi.stderr.on("data", (d) => { errText += d; });
  cgi.on("error", (e) => { if (!res.headersSent) { res.statusCode = 500; res.end("git http-backend: " + e.message + "\n"); } });
  req.pipe(cgi.stdin);
  cgi.stdin.on("error", () => {});
  let head = Buffer.alloc(0);
  let body = false;
  cgi.stdout.on("data", (d) => {
    if (body) { res.write(d); return; }
    head = Buffer.concat([head, d]);
    const crlf = head.indexOf("\r\n\r\n");
    const lf = head.indexOf("\n\n");
    const end = crlf >= 0 && (lf < 0 || crlf < lf) ? crlf : lf;
    if (end < 0) return;
    body = true;
    for (const line of head.slice(0, end).toString().split(/\r?\n/)) {
      const c = line.indexOf(":");
      if (c < 0) continue;
      const name = line.slice(0, c).trim();
      const value = line.slice(c + 1).trim();
      if (name.toLowerCase() === "status") res.statusCode = parseInt(value, 10);
      else res.setHeader(name, value);
    }
    res.write(head.slice(end + (end === crlf ? 4 : 2)));
  });
  cgi.on("close", (code) => {
    if (errText) seen("git-stderr " + errText);
    if (!body && !res.headersSent) { res.statusCode = 500; res.write("git http-backend exited " + code + ": " + errText); }
    res.end();
  });
}

https
  .createServer({ cert: certPem, key: keyPem }, (req, res) => {
    if ((req.headers.host || "").split(":")[0] === "git.test") return git(req, res);
    seen("https " + req.url);
    res.end("hello " + req.method + " " + req.url + "\n");
  })
  .listen(443, "0.0.0.0", up);

const plain = http.createServer((req, res) => {
  seen("http " + req.url);
  res.end("plain " + req.method + " " + req.url + "\n");
});
const wss = new WebSocketServer({ server: plain });
wss.on("connection", (ws, req) => {
  seen("ws " + req.url);
  ws.on("message", (m) => { seen("wsmsg " + m); ws.send("echo:" + m); });
});
plain.listen(80, "0.0.0.0", up);

process.stdin.on("data", () => {});
process.stdin.on("end", () => process.exit(0));
