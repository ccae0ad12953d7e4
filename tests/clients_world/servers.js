// Real upstream servers for tests/clients_sandbox.rs, run by the host's
// node inside the test's network namespace: a gRPC server (@grpc/grpc-js,
// TLS from the test CA, h2 by ALPN) on 50051, an HTTPS server on 443, and
// a WebSocket server (ws) on plain HTTP port 80. Every request is appended
// to SEEN (one line: "grpc PATH", "https PATH", "ws PATH", "wsmsg TEXT").
// Prints "ready" when all listen; exits when stdin closes (the test ended).
// Usage: node servers.js CERT_PEM KEY_PEM SEEN
"use strict";
const fs = require("fs");
const https = require("https");
const http = require("http");
const grpc = require("@grpc/grpc-js");
const { WebSocketServer } = require("ws");

const [cert, key, seenFile] = process.argv.slice(2);
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

https
  .createServer({ cert: certPem, key: keyPem }, (req, res) => {
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
