// The client over wss:// to a gateway that serves TLS itself (`--tls-cert-file`,
// `--tls-key-file`), with a CA and certificate openssl makes for the run. In Node, trusting the
// CA through NODE_EXTRA_CA_CERTS (in a process of its own, since Node reads it at start); in
// Chromium, trusting the certificate's key through --ignore-certificate-errors-spki-list. The
// connections go through a TCP relay the test can cut, and events are published over https.
// Without the trust, neither connects.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { startGateway, startFrontEnd, startRelay, testCa, publishNumbered, stressPage, eventually, sleep, launchChromium, HERE, OUT } from "./harness.mjs";

let dir;
let tls;
let caPem;
let gw;
let relay;
before(async () => {
  await mkdir(OUT, { recursive: true });
  dir = await mkdtemp(path.join(tmpdir(), "floodgate-js-tls-"));
  tls = await testCa(dir);
  caPem = await readFile(tls.ca, "utf8");
  gw = await startGateway(["--history-max-events", "100000", "--tls-cert-file", tls.cert, "--tls-key-file", tls.key]);
  assert.match(gw.log(), /listening on wss:\/\//);
  relay = await startRelay(gw.addr);
});
after(async () => {
  await relay?.stop();
  await gw?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Runs tls-subscriber.mjs with `env`; `lines` fills with what it prints, `done` resolves with its last line. */
function subscriber(env) {
  const child = spawn(process.execPath, [path.join(HERE, "tls-subscriber.mjs")], {
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = [];
  let rest = "";
  child.stdout.setEncoding("utf8").on("data", (chunk) => {
    rest += chunk;
    const parts = rest.split("\n");
    rest = parts.pop();
    for (const l of parts) lines.push(JSON.parse(l));
  });
  const done = new Promise((resolve, reject) => {
    child.once("exit", (code) => {
      const last = lines.at(-1);
      if (code === 0 && last?.done) resolve(last);
      else reject(new Error(`the subscriber exited with ${code}: ${JSON.stringify(lines).slice(0, 500)}`));
    });
  });
  return { child, lines, done, expect: (n) => child.stdin.write(`${n}\n`), kill: () => child.kill("SIGKILL") };
}

test("in Node, every event arrives once and in order over wss:// while the connection is cut", async () => {
  const user = "tls-node-user";
  const sub = subscriber({ WS_URL: `wss://${relay.addr}/ws`, USER: user, NODE_EXTRA_CA_CERTS: tls.ca });
  try {
    await eventually("the subscriber to go live", () => sub.lines.some((l) => l.state === "live"));
    // Events go out until at least 1000 were published and 5 live connections were cut: a cut
    // is made only once the client said it is live again after the last one.
    let published = 0;
    let liveCuts = 0;
    let cutAt = -1;
    const publishing = (async () => {
      for (; published < 1000 || liveCuts < 5; published += 100) {
        await publishNumbered(gw.addr, user, published + 1, 100, { ca: caPem });
        await sleep(40);
      }
    })();
    while (published < 1000 || liveCuts < 5) {
      await sleep(60 + Math.random() * 80);
      if (sub.lines.findLastIndex((l) => l.state === "live") > cutAt) {
        cutAt = sub.lines.length - 1;
        relay.cut();
        liveCuts++;
      }
    }
    await publishing;
    sub.expect(published);
    const r = await sub.done;
    assert.deepEqual(r.gaps, []);
    assert.equal(r.seqs.length, published, `${r.seqs.length} events handled`);
    assert.deepEqual(r.seqs, Array.from({ length: published }, (_, i) => i + 1), "each once, in order");
    assert.ok(r.stats.reconnects >= liveCuts - 1, `${r.stats.reconnects} reconnects after ${liveCuts} cuts of a live connection`);
  } finally {
    sub.kill();
  }
});

test("in Node, a client that does not trust the CA does not connect", async () => {
  const sub = subscriber({ WS_URL: `wss://${relay.addr}/ws`, USER: "untrusting", GIVE_UP_MS: "3000", NODE_EXTRA_CA_CERTS: "" });
  const r = await sub.done;
  assert.ok(!sub.lines.some((l) => l.state === "live"), JSON.stringify(sub.lines));
  assert.deepEqual(r.seqs, []);
  assert.equal(r.stats.connections, 0, JSON.stringify(r.stats));
  const attempts = sub.lines.filter((l) => l.state === "connecting").length;
  assert.ok(attempts >= 2, `it kept trying: ${JSON.stringify(sub.lines)}`);
});

test("in Chromium, a page gets every event once and in order over wss:// while cut and reloaded", async () => {
  const user = "tls-tab-user";
  const fe = await startFrontEnd(gw.addr, {
    "/stress.html": path.join(HERE, "page/stress.html"),
    "/dist/index.js": path.join(HERE, "../dist/index.js"),
  });
  const trusting = await launchChromium([`--ignore-certificate-errors-spki-list=${tls.spki}`]);
  const untrusting = await launchChromium();
  try {
    const wsUrl = `wss://${relay.addr}/ws`;
    const url = `${fe.origin}/stress.html?user=${user}&ws=${encodeURIComponent(wsUrl)}`;

    // A browser that does not trust the certificate never goes live.
    const refused = await untrusting.newPage();
    await refused.goto(url.replace(user, "untrusting-tab"));
    await sleep(2000);
    const r0 = await refused.evaluate(() => window.report());
    assert.notEqual(r0.state, "live");
    assert.equal(r0.stats.connections, 0, JSON.stringify(r0.stats));

    const page = await trusting.newPage();
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e));
    await page.goto(url);
    const N = 2000;
    const { report: r, reloads } = await stressPage(page, {
      addr: gw.addr,
      user,
      n: N,
      cut: () => relay.cut(),
      reloadEvery: 3,
      reloads: 2,
      cuts: 4,
      ca: caPem,
    });
    await page.screenshot({ path: path.join(OUT, "tls-stress.png") });
    assert.deepEqual(r.bad, [], "no event out of order or twice");
    assert.deepEqual(r.gaps, []);
    assert.equal(r.count, N, "each event handled exactly once over all page loads");
    assert.equal(r.loads, reloads + 1);
    assert.deepEqual(pageErrors, []);
  } finally {
    await trusting.close();
    await untrusting.close();
    await fe.stop();
  }
});
