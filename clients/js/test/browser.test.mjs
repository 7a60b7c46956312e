// The client in a real browser: Debian's Chromium, headless, driven by playwright-core (which
// downloads no browser). Pages come from a front end the test starts, which also passes `/ws`
// through to a real `floodgate serve`, so the test can cut the page's connection.
// Screenshots go to target/js-tests/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import { startGateway, startFrontEnd, publish, publishNumbered, stressPage, eventually, token, launchChromium, HERE, REPO, OUT } from "./harness.mjs";

const DIST = path.join(HERE, "../dist");

/** The README's browser example: the first ```js block after the marker that names this file. */
export async function readmeExample() {
  const readme = await readFile(path.join(REPO, "README.md"), "utf8");
  const at = readme.indexOf("<!-- tested by clients/js/test/browser.test.mjs -->");
  assert.ok(at >= 0, "the README marks its browser example");
  const m = /```js\n([\s\S]*?)```/.exec(readme.slice(at));
  assert.ok(m, "a js block follows the marker");
  return m[1];
}

let gw;
let fe;
let browser;
before(async () => {
  await mkdir(OUT, { recursive: true });
  gw = await startGateway(["--history-max-events", "100000"]);
  const example = await readmeExample();
  fe = await startFrontEnd(gw.addr, {
    "/stress.html": path.join(HERE, "page/stress.html"),
    "/example.html": path.join(HERE, "page/example.html"),
    "/example.js": () => example,
    "/dist/index.js": path.join(DIST, "index.js"),
    "/dist/index.js.map": path.join(DIST, "index.js.map"),
  });
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await fe?.stop();
  await gw?.stop();
});

test("a page gets every event once and in order while its connection is cut and the page reloaded", async () => {
  const user = "tab-user";
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e));
  await page.goto(`${fe.origin}/stress.html?user=${user}`);
  const N = 4000;
  // At least 3 reloads and 5 cuts, however fast the events go out.
  const { report: r, reloads, cuts } = await stressPage(page, {
    addr: gw.addr,
    user,
    n: N,
    cut: () => fe.cut(),
    reloadEvery: 4,
    reloads: 3,
    cuts: 5,
    ackEvery: 250,
  });
  await page.screenshot({ path: path.join(OUT, "stress.png") });
  assert.deepEqual(r.bad, [], "no event out of order or twice");
  assert.deepEqual(r.gaps, [], "no gap: the gateway's history held everything");
  assert.equal(r.count, N, "each event handled exactly once over all page loads");
  assert.equal(r.loads, reloads + 1);
  assert.ok(reloads >= 3 && cuts >= 5, `${reloads} reloads and ${cuts} cuts`);
  assert.deepEqual(pageErrors, []);
  await page.close();
});

test("the README's example renders an agent run, and acks the answer only once it is saved", async () => {
  const user = "browser-user"; // whom the front end's /api/floodgate-token signs for
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e));
  await page.goto(`${fe.origin}/example.html`);
  await eventually("live", async () => (await page.evaluate(() => document.body.dataset.state)) === "live");
  await publish(gw.addr, [
    { user, type: "agent_started", run_id: "run-7" },
    { user, type: "agent_thinking", run_id: "run-7", data: { delta: "Looking up " } },
    { user, type: "agent_thinking", run_id: "run-7", data: { delta: "the forecast." } },
    { user, type: "tool_executing", run_id: "run-7", data: { tool: "weather" } },
    { user, type: "tool_completed", run_id: "run-7", data: { tool: "weather", result: "sun" } },
    { user, type: "agent_completed", run_id: "run-7", data: { answer: "Sunny, 21 °C" } },
  ]);
  const logText = () => page.evaluate(() => document.querySelector("#log").textContent);
  // What the gateway would redeliver to a new connection of the user: its unacked events.
  const unacked = async () => {
    const frames = await page.evaluate(async (tok) => {
      const ws = new WebSocket(`${location.origin.replace(/^http/, "ws")}/ws?token=${tok}`);
      const frames = [];
      ws.onmessage = (e) => frames.push(JSON.parse(e.data));
      await new Promise((r) => setTimeout(r, 300));
      ws.close();
      return frames;
    }, token(user));
    assert.equal(frames[0]?.type, "hello");
    return frames.find((f) => f.type === "redelivery")?.count ?? 0;
  };
  await eventually("saveAnswer to be called", async () => (await page.evaluate(() => window.saving)) === 1);
  assert.equal(await unacked(), 1, "agent_completed is not acked while saveAnswer runs");
  await page.evaluate(() => window.finishSave());
  await eventually("the answer", async () => (await logText()).includes("\u2714"));
  assert.equal(await logText(), "\u25b6 run run-7\nLooking up the forecast.\n\u2699 weather\u2026 done\n\n\u2714 Sunny, 21 \u00b0C\n");
  assert.deepEqual(await page.evaluate(() => window.saved), [{ answer: "Sunny, 21 \u00b0C" }]);
  await eventually("the ack", async () => (await unacked()) === 0, 5000);
  await page.screenshot({ path: path.join(OUT, "example.png") });
  assert.deepEqual(pageErrors, []);
  await page.close();
});

test("a gap the test forces reaches the page once, where it was forced, and nothing else is missing", async () => {
  const small = await startGateway(["--history-max-events", "50"]);
  const front = await startFrontEnd(small.addr, {
    "/stress.html": path.join(HERE, "page/stress.html"),
    "/dist/index.js": path.join(DIST, "index.js"),
  });
  const user = "gap-tab-user";
  const page = await browser.newPage();
  try {
    await page.goto(`${front.origin}/stress.html?user=${user}`);
    const report = () => page.evaluate(() => window.report?.());
    await eventually("live", async () => (await report())?.state === "live");
    await publishNumbered(small.addr, user, 1, 100);
    await eventually("100 events", async () => (await report()).last === 100);
    front.down();
    await eventually("offline", async () => ["offline", "connecting"].includes((await report()).state));
    await publishNumbered(small.addr, user, 101, 300);
    front.up();
    await eventually("the last event", async () => (await report()).last === 400);
    const r = await report();
    assert.deepEqual(
      r.gaps.map((g) => [g.reason, g.from, g.to]),
      [["history_evicted", 101, 350]],
      "one gap: what the history (50 events) no longer held",
    );
    assert.deepEqual(r.bad, []);
    assert.equal(r.count, 150, "1..100 and 351..400, each once");
    await page.screenshot({ path: path.join(OUT, "forced-gap.png") });
  } finally {
    await page.close();
    await front.stop();
    await small.stop();
  }
});
