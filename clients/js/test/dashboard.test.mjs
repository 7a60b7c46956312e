// The gateway's live dashboard (`--dashboard`) in Debian's headless Chromium: it renders, and
// its numbers move while events flow to connected clients. Screenshot: target/js-tests/.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { startGateway, startFrontEnd, publishNumbered, eventually, sleep, token, launchChromium, OUT } from "./harness.mjs";

test("the dashboard renders and follows a load: connections, events in and out, per shard", async () => {
  await mkdir(OUT, { recursive: true });
  const gw = await startGateway(["--dashboard"]);
  const fe = await startFrontEnd(gw.addr);
  const browser = await launchChromium();
  const sockets = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 820 } });
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e));
    await page.goto(`http://${gw.addr}/dashboard`);
    const state = () => page.evaluate(() => window.dashboard ?? { samples: 0 });
    const text = (id) => page.evaluate((id) => document.getElementById(id).textContent, id);
    await eventually("a first reading", async () => (await state()).samples >= 1);
    assert.equal(await text("connections"), "0");

    // 24 clients over 8 users, and events for them for about four seconds.
    let received = 0;
    for (let i = 0; i < 24; i++) {
      const ws = new WebSocket(`${fe.wsUrl}?token=${token(`dash-user-${i % 8}`)}`);
      ws.onmessage = () => received++;
      sockets.push(ws);
    }
    await eventually("24 connections on the page", async () => (await text("connections")) === "24");
    const p99s = [];
    let inRates = [];
    let outRates = [];
    const started = Date.now();
    let n = 0;
    let shot = false;
    while (Date.now() - started < 4000) {
      if (!shot && Date.now() - started > 3000) {
        await page.screenshot({ path: path.join(OUT, "dashboard.png"), fullPage: true });
        shot = true;
      }
      for (let u = 0; u < 8; u++) await publishNumbered(gw.addr, `dash-user-${u}`, n, 50, { batch: 50 });
      n += 50;
      const s = await state();
      inRates.push(s.inRate);
      p99s.push(await text("p99"));
      outRates.push(s.outRate);
      await sleep(50);
    }
    await sleep(1200);
    const s = await state();
    assert.ok(Math.max(...inRates) > 0, `events in / s rose above 0: ${inRates}`);
    assert.ok(Math.max(...outRates) > Math.max(...inRates), "each event goes to three connections: more out than in");
    assert.equal(s.last.total.events_in, n * 8, "the page's total of events in is what was published");
    assert.equal(s.last.total.events_out, received - 24, "frames out: every event frame the clients got (not the 24 hellos)");
    assert.equal(s.last.shards.length, 2);
    assert.equal(await page.evaluate(() => document.querySelectorAll("#shards tbody tr").length), 2);
    assert.equal(await text("status"), "live");
    assert.ok(p99s.some((p) => /^\u2264 [0-9.]+ (\u00b5s|ms)$/.test(p)), `a p99 while events flowed: ${[...new Set(p99s)]}`);
    assert.ok(shot);
    assert.deepEqual(pageErrors, []);
    // Off by default: a gateway without the setting answers 404.
    const off = await startGateway([]);
    try {
      const r = await fetch(`http://${off.addr}/dashboard/stats`);
      assert.equal(r.status, 404);
      assert.match(await r.text(), /dashboard setting/);
    } finally {
      await off.stop();
    }
  } finally {
    for (const ws of sockets) ws.close();
    await browser.close();
    await fe.stop();
    await gw.stop();
  }
});
