// receiver.js — a small OTLP/HTTP receiver for chorus's traces spec
// (tests/integration/otlp_spec.lua), checking what it gets against the
// OpenTelemetry protocol's own definitions: the protobuf root that
// @opentelemetry/otlp-transformer generates from opentelemetry-proto.
//
//   node tests/otlp/receiver.js [--max-seconds N]
//
// Listens on 127.0.0.1 (a free port) and prints `listening 127.0.0.1:PORT`.
//   POST /v1/traces   an ExportTraceServiceRequest in the OTLP JSON mapping
//                     (Content-Type application/json): 200 {} when it is
//                     valid, else 400 with why (kept in /rejected)
//   GET  /spans       every span taken so far, flattened: ids as hex,
//                     times as the strings sent, attributes as an object,
//                     plus the resource's service.name
//   GET  /rejected    the requests refused, with why
//   POST /reset       forgets both
// A request is valid when the JSON mapping's own rules hold (trace ids of
// 32 and span ids of 16 lowercase hex digits, 64-bit integers as decimal
// strings, enums as integers) and, with ids as bytes and times as Longs,
// the protobuf type's verify() accepts it and it survives an encode and
// decode unchanged.
"use strict";
const http = require("http");
const root = require("@opentelemetry/otlp-transformer/build/src/generated/root");
const Long = require("protobufjs/minimal").util.Long;

const Request = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;

let spans = [];
let rejected = [];

const HEX32 = /^[0-9a-f]{32}$/;
const HEX16 = /^[0-9a-f]{16}$/;
const DECIMAL = /^[0-9]+$/;

function fail(why) {
  throw new Error(why);
}

// The JSON mapping's rules, and the value protobufjs takes (bytes, Longs).
function toProto(span, where) {
  const out = Object.assign({}, span);
  if (!HEX32.test(span.traceId || "")) fail(`${where}.traceId must be 32 lowercase hex digits, got ${span.traceId}`);
  if (!HEX16.test(span.spanId || "")) fail(`${where}.spanId must be 16 lowercase hex digits, got ${span.spanId}`);
  out.traceId = Buffer.from(span.traceId, "hex");
  out.spanId = Buffer.from(span.spanId, "hex");
  if (span.parentSpanId !== undefined) {
    if (!HEX16.test(span.parentSpanId)) fail(`${where}.parentSpanId must be 16 lowercase hex digits`);
    out.parentSpanId = Buffer.from(span.parentSpanId, "hex");
  }
  for (const f of ["startTimeUnixNano", "endTimeUnixNano"]) {
    if (typeof span[f] !== "string" || !DECIMAL.test(span[f])) fail(`${where}.${f} must be a decimal string`);
    out[f] = Long.fromString(span[f], true);
  }
  if (BigInt(span.endTimeUnixNano) < BigInt(span.startTimeUnixNano)) fail(`${where} ends before it starts`);
  if (!Number.isInteger(span.kind)) fail(`${where}.kind must be an integer`);
  out.events = (span.events || []).map((e, i) => {
    if (typeof e.timeUnixNano !== "string" || !DECIMAL.test(e.timeUnixNano)) {
      fail(`${where}.events[${i}].timeUnixNano must be a decimal string`);
    }
    return Object.assign({}, e, { timeUnixNano: Long.fromString(e.timeUnixNano, true),
      attributes: attributesToProto(e.attributes, `${where}.events[${i}]`) });
  });
  out.attributes = attributesToProto(span.attributes, where);
  return out;
}

// Attributes: one value each; an intValue is a decimal string (JSON mapping), a Long for protobufjs.
function attributesToProto(attributes, where) {
  return (attributes || []).map((a) => {
    const v = a.value || {};
    if (Object.keys(v).length !== 1) fail(`${where}.attributes.${a.key} must have one value`);
    if (v.intValue === undefined) return a;
    if (!(typeof v.intValue === "string" && /^-?[0-9]+$/.test(v.intValue))) {
      fail(`${where}.attributes.${a.key}.intValue must be a decimal string`);
    }
    return { key: a.key, value: { intValue: Long.fromString(v.intValue) } };
  });
}

function check(body) {
  if (!Array.isArray(body.resourceSpans) || body.resourceSpans.length === 0) fail("resourceSpans must be a list");
  const proto = { resourceSpans: [] };
  const flat = [];
  body.resourceSpans.forEach((rs, i) => {
    const service = ((rs.resource || {}).attributes || []).find((a) => a.key === "service.name");
    const prs = Object.assign({}, rs, { scopeSpans: [] });
    (rs.scopeSpans || []).forEach((ss, j) => {
      const pss = Object.assign({}, ss, { spans: [] });
      (ss.spans || []).forEach((s, k) => {
        pss.spans.push(toProto(s, `resourceSpans[${i}].scopeSpans[${j}].spans[${k}]`));
        const attrs = {};
        for (const a of s.attributes || []) {
          const v = a.value;
          attrs[a.key] = v.stringValue ?? v.boolValue ?? v.doubleValue ?? (v.intValue !== undefined ? Number(v.intValue) : null);
        }
        flat.push({
          traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId || null, traceState: s.traceState || null,
          name: s.name, kind: s.kind, start: s.startTimeUnixNano, end: s.endTimeUnixNano, attributes: attrs,
          status: s.status || null, events: (s.events || []).map((e) => e.name),
          service: service ? service.value.stringValue : null, scope: (ss.scope || {}).name || null,
        });
      });
      prs.scopeSpans.push(pss);
    });
    proto.resourceSpans.push(prs);
  });
  const why = Request.verify(proto);
  if (why) fail(`ExportTraceServiceRequest.verify: ${why}`);
  // the same message after an encode and decode: every field had its type
  const back = Request.toObject(Request.decode(Request.encode(Request.fromObject(proto)).finish()),
    { longs: String, bytes: String });
  const sent = Request.toObject(Request.fromObject(proto), { longs: String, bytes: String });
  if (JSON.stringify(back) !== JSON.stringify(sent)) fail("the request does not survive a protobuf round trip");
  return flat;
}

function answer(res, status, value) {
  const text = JSON.stringify(value);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const text = Buffer.concat(chunks).toString("utf8");
    if (req.method === "POST" && req.url === "/v1/traces") {
      try {
        if (!/^application\/json\b/.test(req.headers["content-type"] || "")) {
          fail(`Content-Type must be application/json, got ${req.headers["content-type"]}`);
        }
        spans.push(...check(JSON.parse(text)));
        answer(res, 200, {});
      } catch (e) {
        rejected.push({ why: e.message, body: text.slice(0, 2000) });
        answer(res, 400, { error: e.message });
      }
    } else if (req.method === "GET" && req.url === "/spans") {
      answer(res, 200, spans);
    } else if (req.method === "GET" && req.url === "/rejected") {
      answer(res, 200, rejected);
    } else if (req.method === "POST" && req.url === "/reset") {
      spans = [];
      rejected = [];
      answer(res, 200, {});
    } else {
      answer(res, 404, { error: "not found" });
    }
  });
});

const i = process.argv.indexOf("--max-seconds");
const maxSeconds = i > 0 ? Number(process.argv[i + 1]) : 120;
setTimeout(() => process.exit(0), maxSeconds * 1000).unref();
process.on("SIGTERM", () => process.exit(0));
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`listening 127.0.0.1:${server.address().port}\n`);
});
