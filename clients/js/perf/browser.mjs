// Figures for the TypeScript client in Debian's headless Chromium against a real gateway (the
// release build): how long a page takes from a cut connection to `live` again, and how many
// events a second one tab takes in. Prints a markdown table. Run by scripts/js-client-perf.
import path from "node:path";
import { startGateway, startFrontEnd, eventually, sleep, launchChromium, HERE, INGEST_KEY } from "../test/harness.mjs";

const CUTS = Number(process.env.CUTS ?? 20);
const EVENTS = Number(process.env.EVENTS ?? 200_000);
const DIST = path.join(HERE, "../dist");

// A page that counts what its one handler gets, and times reconnects.
const PAGE = `<!doctype html><meta charset="utf-8"><body><pre id="out"></pre><script type="module">
import { FloodgateClient } from "/dist/index.js";
const q = new URLSearchParams(location.search);
const client = new FloodgateClient({
  url: location.origin.replace(/^http/, "ws") + "/ws",
  getToken: () => fetch("/token?user=" + q.get("user")).then((r) => r.text()),
  backoff: q.get("initial") === null ? undefined : { initialMs: Number(q.get("initial")) },
  start: q.get("start") ?? "live",
  onGap: (g) => window.gaps.push(g),
});
window.gaps = [];
window.count = 0; window.first = 0; window.last = 0; window.seq = 0;
client.on("*", (e) => {
  if (window.count === 0) window.first = performance.now();
  window.count++; window.seq = e.seq; window.last = performance.now();
  if (window.count % 10000 === 0) document.getElementById("out").textContent = window.count + " events";
});
window.client = client;
if (q.get("raw")) {
  // The same stream without the client: a bare WebSocket that parses and counts each frame.
  const tok = await fetch("/token?user=" + q.get("user")).then((r) => r.text());
  const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/ws?since=0&token=" + tok);
  ws.onmessage = (m) => {
    const e = JSON.parse(m.data);
    if (e.seq === undefined) return;
    if (window.count === 0) window.first = performance.now();
    window.count++; window.seq = e.seq; window.last = performance.now();
  };
} else client.connect();
</script>`;

/** Publishes `events`, sending again (in order) those refused as `full` until all are in. */
async function publishAll(addr, events) {
  let left = events;
  while (left.length > 0) {
    const res = await fetch(`http://${addr}/api/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${INGEST_KEY}`, "content-type": "application/json" },
      body: JSON.stringify(left),
    });
    const body = await res.json();
    if (res.status !== 200 || body.errors.some((e) => e.code !== "full")) throw new Error(`publish: ${res.status} ${JSON.stringify(body).slice(0, 300)}`);
    // Refused events are a suffix: the ring stays full once it is.
    left = body.errors.length ? left.slice(body.errors[0].index) : [];
    if (left.length) await sleep(2);
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))];

const gw = await startGateway(["--history-max-events", "1048576", "--history-max-bytes", "268435456", "--history-total-bytes", "536870912"]);
const fe = await startFrontEnd(gw.addr, { "/page.html": () => PAGE, "/dist/index.js": path.join(DIST, "index.js") });
const browser = await launchChromium();
const rows = [];
try {
  for (const initial of [null, 0]) {
    const page = await browser.newPage();
    const user = `reconnect-${initial}`;
    await page.goto(`${fe.origin}/page.html?user=${user}${initial === null ? "" : `&initial=${initial}`}`);
    const live = () => page.evaluate(() => window.client.state === "live");
    await eventually("live", live);
    const times = [];
    for (let i = 0; i < CUTS; i++) {
      const before = await page.evaluate(() => window.client.stats.reconnects);
      fe.cut();
      await eventually("the reconnect", async () => (await page.evaluate(() => window.client.stats.reconnects)) > before && (await live()));
      times.push(await page.evaluate(() => window.client.stats.lastReconnectToLiveMs));
      // A connection up for 2 s resets the backoff: each cut is then a first one.
      await sleep(2100);
    }
    rows.push([`cut to live again, backoff ${initial === null ? "default (first retry after 125-250 ms)" : "0 ms"}`, `median ${median(times)} ms, p90 ${pct(times, 0.9)} ms, max ${Math.max(...times)} ms (${CUTS} cuts)`]);
    await page.close();
  }
  // The events wait in the gateway's history; then a page asks for all of them, so the figure
  // is what the tab (browser, client, one handler) takes in, not what a publisher sends.
  const user = "throughput";
  const batch = Array.from({ length: 1000 }, (_, i) => ({ user, type: "agent_thinking", run_id: "run-1", data: { delta: "x".repeat(60), i } }));
  for (let sent = 0; sent < EVENTS; sent += batch.length) await publishAll(gw.addr, batch);
  const page = await browser.newPage();
  await page.goto(`${fe.origin}/page.html?user=${user}&start=retained`);
  await eventually(`${EVENTS} events in the page`, () => page.evaluate((n) => window.seq >= n, EVENTS), 300_000);
  const r = await page.evaluate(() => ({ count: window.count, ms: window.last - window.first, gaps: window.gaps.length }));
  rows.push([`events a tab takes in: ${EVENTS} ~150-byte agent_thinking events replayed from history, one counting handler`, `${Math.round((r.count / r.ms) * 1000)} events/s (${r.count} events in ${Math.round(r.ms)} ms; gaps ${r.gaps})`]);
  await page.close();
  const bare = await browser.newPage();
  await bare.goto(`${fe.origin}/page.html?user=${user}&raw=1`);
  await eventually(`${EVENTS} events in the bare page`, () => bare.evaluate((n) => window.seq >= n, EVENTS), 300_000);
  const b = await bare.evaluate(() => ({ count: window.count, ms: window.last - window.first }));
  rows.push([`the same replay to a bare WebSocket in the tab (JSON.parse and count, no client)`, `${Math.round((b.count / b.ms) * 1000)} events/s (${b.count} events in ${Math.round(b.ms)} ms)`]);
  await bare.close();
} finally {
  await browser.close();
  await fe.stop();
  await gw.stop();
}
console.log("| figure | measured |\n| --- | --- |");
for (const [a, b] of rows) console.log(`| ${a} | ${b} |`);
