// Test helpers: a real `floodgate serve` process on 127.0.0.1:0, tokens signed here with
// node:crypto (not by floodgate), events published through the gateway's ingest API, and a
// front-end server that serves files, hands out tokens and passes `/ws` upgrades through to
// the gateway over TCP, so a test can cut every client connection at once (`cut()`) or refuse
// new ones for a while (`down()` / `up()`).
import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect, createServer as createTcpServer } from "node:net";
import { readFile, writeFile } from "node:fs/promises";
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
      const m = /wss?:\/\/([0-9.]+:[0-9]+)\//.exec(log);
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

/**
 * Publishes `events` (objects with `user`, `type`, ...) through `POST /api/publish`; checks all
 * were accepted. With `ca` (PEM text) it goes over https to a TLS gateway, trusting that CA only.
 */
export async function publish(addr, events, { ca } = {}) {
  const json = JSON.stringify(events);
  const headers = { authorization: `Bearer ${INGEST_KEY}`, "content-type": "application/json" };
  let status;
  let body;
  if (ca) {
    [status, body] = await new Promise((resolve, reject) => {
      const req = httpsRequest(`https://${addr}/api/publish`, { method: "POST", headers, ca, agent: false }, (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (c) => (text += c));
        res.on("end", () => resolve([res.statusCode, JSON.parse(text)]));
      });
      req.on("error", reject);
      req.end(json);
    });
  } else {
    const res = await fetch(`http://${addr}/api/publish`, { method: "POST", headers, body: json });
    [status, body] = [res.status, await res.json()];
  }
  if (status !== 200 || body.accepted !== events.length) {
    throw new Error(`publish: ${status} ${JSON.stringify(body).slice(0, 300)}`);
  }
  return body;
}

/**
 * A CA of its own and a certificate it signs for 127.0.0.1, made by openssl in `dir`: paths
 * `ca`, `cert`, `key`, and `spki`, the base64 SHA-256 of the certificate's public key (what
 * Chromium's `--ignore-certificate-errors-spki-list` takes).
 */
export async function testCa(dir) {
  const p = (f) => path.join(dir, f);
  const openssl = (...args) => execFileSync("openssl", args, { stdio: ["pipe", "pipe", "ignore"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await writeFile(p("leaf.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n");
  openssl("req", "-x509", "-days", "1", "-subj", "/CN=floodgate js test CA", ...ec, "-keyout", p("ca.key"), "-out", p("ca.pem"));
  openssl("req", "-subj", "/CN=127.0.0.1", ...ec, "-keyout", p("key.pem"), "-out", p("leaf.csr"));
  openssl("x509", "-req", "-days", "1", "-in", p("leaf.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"), "-CAcreateserial", "-extfile", p("leaf.ext"), "-out", p("cert.pem"));
  const pub = openssl("x509", "-in", p("cert.pem"), "-pubkey", "-noout");
  const der = execFileSync("openssl", ["pkey", "-pubin", "-outform", "der"], { input: pub });
  const spki = execFileSync("openssl", ["dgst", "-sha256", "-binary"], { input: der }).toString("base64");
  return { ca: p("ca.pem"), cert: p("cert.pem"), key: p("key.pem"), spki };
}

/** Pipes `socket` and `upstream` into each other, kept in `pairs` until either closes. */
function joinPair(pairs, socket, upstream) {
  const pair = { socket, upstream };
  pairs.add(pair);
  const drop = () => {
    pairs.delete(pair);
    socket.destroy();
    upstream.destroy();
  };
  socket.on("error", drop).on("close", drop);
  upstream.on("error", drop).on("close", drop);
  socket.pipe(upstream);
  upstream.pipe(socket);
}

/** Cuts every pair: a TCP reset to the client, the upstream closed (no close frame). */
function cutPairs(pairs) {
  for (const p of pairs) {
    p.socket.resetAndDestroy?.() ?? p.socket.destroy();
    p.upstream.destroy();
  }
  pairs.clear();
}

/**
 * A TCP relay on 127.0.0.1:0 to `addr`: it passes bytes both ways without reading them (so
 * TLS goes through it end to end) and can cut every connection with a reset (`cut()`).
 */
export async function startRelay(addr) {
  const pairs = new Set();
  const server = createTcpServer((socket) => {
    joinPair(pairs, socket, connect(Number(addr.split(":")[1]), "127.0.0.1"));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    addr: `127.0.0.1:${server.address().port}`,
    open: () => pairs.size,
    cut: () => cutPairs(pairs),
    async stop() {
      this.cut();
      await new Promise((r) => server.close(r));
    },
  };
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
    joinPair(pairs, socket, upstream);
    let headText = `${req.method} ${req.url} HTTP/1.1\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2) headText += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    upstream.write(headText + "\r\n");
    if (head.length) upstream.write(head);
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
    cut: () => cutPairs(pairs),
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

/** Debian's Chromium (`CHROMIUM` overrides the path), headless, through playwright-core, with `extraArgs`. */
export async function launchChromium(extraArgs = []) {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    // No background traffic: this machine's network is closed, and Chromium would keep trying.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", ...extraArgs],
  });
}

/** Publishes `n` events of `type` for `user`, `data.n` numbered from `first`, in batches (`pauseMs` apart). */
export async function publishNumbered(addr, user, first, n, { batch = 100, ackEvery = 0, type = "tool_completed", pauseMs = 0, ca } = {}) {
  for (let i = first; i < first + n; i += batch) {
    const evs = [];
    for (let k = i; k < Math.min(first + n, i + batch); k++) {
      const ev = { user, type, data: { n: k } };
      if (ackEvery && k % ackEvery === 0) ev.ack = true;
      evs.push(ev);
    }
    await publish(addr, evs, { ca });
    if (pauseMs) await sleep(pauseMs);
  }
}

/**
 * Drives a page running page/stress.html: publishes `n` numbered events for `user` to the
 * gateway at `addr` (batches of 100, 15 ms apart; `ackEvery` and `ca` as in publishNumbered)
 * while cutting the page's connection (`cut()`) and reloading the page at random 60-140 ms
 * intervals (every `reloadEvery`-th time a reload), until everything is published and at
 * least `reloads` reloads and `cuts` cuts were made. Resolves, once the page is live with
 * event `n`, with the page's report and the reloads and cuts made.
 */
export async function stressPage(page, { addr, user, n, cut, reloadEvery, reloads: minReloads, cuts: minCuts, ackEvery = 0, ca }) {
  const report = () => page.evaluate(() => window.report?.());
  await eventually("the page to go live", async () => (await report())?.state === "live");
  let published = 0;
  const publishing = (async () => {
    for (; published < n; published += 100) {
      await publishNumbered(addr, user, published + 1, 100, { batch: 100, ackEvery, ca });
      await sleep(15);
    }
  })();
  let done = 0;
  let reloads = 0;
  while (published < n || reloads < minReloads || done - reloads < minCuts) {
    await sleep(60 + Math.random() * 80);
    if (done % reloadEvery === reloadEvery - 1) {
      await page.reload();
      reloads++;
    } else {
      cut();
    }
    done++;
  }
  await publishing;
  await eventually(`all ${n} events`, async () => {
    const r = await report();
    return r?.last === n && r.state === "live";
  });
  return { report: await report(), reloads, cuts: done - reloads };
}
