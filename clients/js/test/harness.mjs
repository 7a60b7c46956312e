// Test helpers: a real `floodgate serve` process on 127.0.0.1:0, tokens signed here with
// node:crypto (not by floodgate), events published through the gateway's ingest API, and a
// front-end server that serves files, hands out tokens and passes `/ws` upgrades through to
// the gateway over TCP, so a test can cut every client connection at once (`cut()`) or refuse
// new ones for a while (`down()` / `up()`).
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { connect } from "node:net";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";

export const SECRET = "js-client-test-secret-js-client-test-secret";
export const INGEST_KEY = "js-client-ingest-key-0123456789";
export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, "../../..");
export const BIN = process.env.FLOODGATE_TEST_BIN ?? path.join(REPO, "target/debug/floodgate");

/** Starts `floodgate serve` with `args`; resolves once it printed its address. */
export function startGateway(args = [], env = {}) {
  const child = spawn(BIN, ["serve", "--bind", "127.0.0.1:0", "--shards", "2", ...args], {
    env: {
      ...process.env,
      FLOODGATE_JWT_HS256_SECRET: SECRET,
      FLOODGATE_INGEST_API_KEY: INGEST_KEY,
      FLOODGATE_LOG: "warn",
      ...env,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`floodgate serve printed no address within 20 s:\n${log}`));
    }, 20_000);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const m = /ws:\/\/([0-9.]+:[0-9]+)\//.exec(log);
      if (m && timer) {
        clearTimeout(timer);
        resolve({
          addr: m[1],
          child,
          log: () => log,
          async stop() {
            if (child.exitCode !== null) return;
            const exited = new Promise((r) => child.once("exit", r));
            child.kill("SIGKILL");
            await exited;
          },
        });
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`floodgate serve exited with ${code}:\n${log}`));
    });
  });
}

const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** An HS256 JWT for `user`, valid for `seconds`. */
export function token(user, seconds = 3600) {
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const body = b64url({ sub: user, exp: Math.floor(Date.now() / 1000) + seconds });
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** Publishes `events` (objects with `user`, `type`, ...) through `POST /api/publish`; checks all were accepted. */
export async function publish(addr, events) {
  const res = await fetch(`http://${addr}/api/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${INGEST_KEY}`, "content-type": "application/json" },
    body: JSON.stringify(events),
  });
  const body = await res.json();
  if (res.status !== 200 || body.accepted !== events.length) {
    throw new Error(`publish: ${res.status} ${JSON.stringify(body).slice(0, 300)}`);
  }
  return body;
}

/** `POST /api/disconnect` for `user`. */
export async function disconnectUser(addr, user) {
  const res = await fetch(`http://${addr}/api/disconnect`, {
    method: "POST",
    headers: { authorization: `Bearer ${INGEST_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  if (res.status !== 200) throw new Error(`disconnect: ${res.status}`);
}

/** The value of one `/metrics` sample (summed over labels). */
export async function metric(addr, name) {
  const text = await (await fetch(`http://${addr}/metrics`)).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith(name))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".map": "application/json",
  ".json": "application/json",
};

/**
 * A front end on 127.0.0.1:0: `files` maps URL paths to files (or to functions returning a
 * body), `GET /token?user=..` (or `/api/floodgate-token`, as in the README's example) answers a
 * fresh JWT (for `browser-user` by default), and `/ws` upgrades are passed through to the
 * gateway at `gatewayAddr` byte for byte.
 */
export async function startFrontEnd(gatewayAddr, files = {}, tokenSeconds = 3600) {
  const pairs = new Set();
  let refusing = false;
  let tokensIssued = 0;
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname === "/token" || url.pathname === "/api/floodgate-token") {
      tokensIssued++;
      res.writeHead(200, { "content-type": "text/plain", "cache-control": "no-store" });
      return res.end(token(url.searchParams.get("user") ?? "browser-user", tokenSeconds));
    }
    const file = files[url.pathname];
    if (file === undefined) {
      res.writeHead(404);
      return res.end("not found");
    }
    const body = typeof file === "function" ? await file() : await readFile(file);
    res.writeHead(200, {
      "content-type": TYPES[path.extname(typeof file === "string" ? file : url.pathname)] ?? "text/plain",
      "cache-control": "no-store",
    });
    res.end(body);
  });
  server.on("upgrade", (req, socket, head) => {
    if (refusing) return socket.destroy();
    const upstream = connect(Number(gatewayAddr.split(":")[1]), "127.0.0.1");
    const pair = { socket, upstream };
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      socket.destroy();
      upstream.destroy();
    };
    socket.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    let headText = `${req.method} ${req.url} HTTP/1.1\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2) headText += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    upstream.write(headText + "\r\n");
    if (head.length) upstream.write(head);
    socket.pipe(upstream);
    upstream.pipe(socket);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  return {
    origin: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    /** Connections passed through right now. */
    open: () => pairs.size,
    tokensIssued: () => tokensIssued,
    /** Cuts every passed-through connection (a TCP reset on both sides, no close frame). */
    cut() {
      for (const p of pairs) {
        p.socket.resetAndDestroy?.() ?? p.socket.destroy();
        p.upstream.destroy();
      }
      pairs.clear();
    },
    /** Refuses upgrades (and cuts the open ones) until `up()`. */
    down() {
      refusing = true;
      this.cut();
    },
    up() {
      refusing = false;
    },
    async stop() {
      this.cut();
      server.closeAllConnections?.();
      await new Promise((r) => server.close(r));
    },
  };
}

/**
 * Resolves when `cond()` is true, checking every 10 ms; rejects after `ms` naming `what` and
 * what `describe()` says of the situation.
 */
export async function eventually(what, cond, ms = 20_000, describe = () => "") {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} ${await describe()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Where the browser tests put their screenshots. */
export const OUT = path.join(REPO, "target/js-tests");

/** Debian's Chromium (`CHROMIUM` overrides the path), headless, through playwright-core. */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    // No background traffic: this machine's network is closed, and Chromium would keep trying.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/** Publishes `n` events of `type` for `user`, `data.n` numbered from `first`, in batches (`pauseMs` apart). */
export async function publishNumbered(addr, user, first, n, { batch = 100, ackEvery = 0, type = "tool_completed", pauseMs = 0 } = {}) {
  for (let i = first; i < first + n; i += batch) {
    const evs = [];
    for (let k = i; k < Math.min(first + n, i + batch); k++) {
      const ev = { user, type, data: { n: k } };
      if (ackEvery && k % ackEvery === 0) ev.ack = true;
      evs.push(ev);
    }
    await publish(addr, evs);
    if (pauseMs) await sleep(pauseMs);
  }
}
