// The client against a real gateway (`floodgate serve`, started here), in Node with its global
// WebSocket. Connections go through a front end the test controls, so it can cut them.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { FloodgateClient, tokenExpiry } from "../dist/index.js";
import {
  startGateway,
  startFrontEnd,
  token,
  publish,
  publishNumbered,
  disconnectUser,
  eventually,
  sleep,
} from "./harness.mjs";

let gw;
let fe;
before(async () => {
  // A history large enough for every test but the one that forces a gap.
  gw = await startGateway(["--history-max-events", "100000", "--jwt-leeway", "0s"]);
  fe = await startFrontEnd(gw.addr);
});
after(async () => {
  await fe?.stop();
  await gw?.stop();
});

/** A client for `user` through the front end, recording what its handlers saw. */
function recorder(user, extra = {}) {
  const seen = [];
  const gaps = [];
  const states = [];
  const errors = [];
  const client = new FloodgateClient({
    url: fe.wsUrl,
    getToken: () => token(user),
    onGap: (g) => void gaps.push(g),
    backoff: { initialMs: 20, maxMs: 200 },
    connectTimeoutMs: 1000,
    ...extra,
  });
  client.on("*", (e) => void seen.push(e));
  client.onState((s) => states.push(s));
  client.onError((e) => errors.push(e));
  return { client, seen, gaps, states, errors };
}

/**
 * A raw connection without a cursor: resolves with how many unacked events the gateway
 * redelivers. It goes through the front end: Node's fetch (used by `publish`) keeps its
 * connection to the gateway alive, and Node's WebSocket would send its upgrade on that
 * connection, which serves only the ingest API.
 */
async function unackedCount(user) {
  const ws = new WebSocket(`${fe.wsUrl}?token=${token(user)}`);
  const frames = [];
  let closed = null;
  ws.onmessage = (e) => frames.push(JSON.parse(e.data));
  ws.onclose = (e) => (closed = e);
  await eventually("hello", () => frames.length > 0 || closed !== null);
  if (frames.length === 0) throw new Error(`closed ${closed.code} ${closed.reason} without hello`);
  await sleep(200);
  ws.close();
  const r = frames.find((f) => f.type === "redelivery");
  return r ? r.count : 0;
}

const seqs = (events) => events.map((e) => e.seq);
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test("every event reaches the handlers once and in order while the connection is cut again and again", async () => {
  const user = "cut-user";
  const r = recorder(user);
  r.client.connect();
  await eventually("live", () => r.client.state === "live");
  const N = 3000;
  const publishing = publishNumbered(gw.addr, user, 1, N, { batch: 50, ackEvery: 100, pauseMs: 10 });
  let cuts = 0;
  // At least 6 cuts, however fast the events go out.
  while ((r.seen.length < N || cuts < 6) && cuts < 20) {
    await sleep(40 + Math.random() * 60);
    fe.cut();
    cuts++;
  }
  await publishing;
  await eventually(`${N} events`, () => r.seen.length >= N && r.client.state === "live", 20_000, () =>
    JSON.stringify({ seen: r.seen.length, last: r.seen.at(-1)?.seq, cursor: r.client.cursor, state: r.client.state, stats: r.client.stats, errors: r.errors.map((e) => String(e.error)), gaps: r.gaps, states: r.states.slice(-8) }),
  );
  await sleep(100);
  assert.deepEqual(
    seqs(r.seen),
    range(1, N),
    "each event once, in seq order",
  );
  assert.deepEqual(r.seen.map((e) => e.data.n), range(1, N), "the data of each event with its seq");
  assert.equal(r.gaps.length, 0, "no gap: the history held everything");
  assert.ok(r.client.stats.reconnects >= 3, `reconnected ${r.client.stats.reconnects} times after ${cuts} cuts`);
  assert.ok(r.states.includes("offline") && r.states.includes("replaying"), `states: ${r.states}`);
  assert.deepEqual(r.client.cursor, { epoch: r.seen[0].epoch, seq: N });
  assert.equal(r.errors.length, 0);
  // Every event that needed an ack was acked, whatever connection it arrived on.
  await eventually("acks to arrive", async () => (await unackedCount(user)) === 0, 5000);
  r.client.close();
  assert.equal(r.client.state, "closed");
});

test("a gap the gateway reports goes to onGap in order, and the stream goes on after it", async () => {
  const small = await startGateway(["--history-max-events", "10"]);
  const front = await startFrontEnd(small.addr);
  try {
    const user = "gap-user";
    const seen = [];
    const order = [];
    const client = new FloodgateClient({
      url: front.wsUrl,
      token: token(user),
      backoff: { initialMs: 20, maxMs: 50 },
      connectTimeoutMs: 1000,
      onGap: (g) => void order.push(`gap ${g.reason} ${g.from}..${g.to}`),
    });
    client.on("*", (e) => {
      seen.push(e.seq);
      order.push(`event ${e.seq}`);
    });
    client.connect();
    await eventually("live", () => client.state === "live");
    await publishNumbered(small.addr, user, 1, 3);
    await eventually("3 events", () => seen.length === 3);
    front.down();
    await eventually("offline", () => client.state === "offline");
    await publishNumbered(small.addr, user, 4, 50);
    front.up();
    await eventually("the rest", () => seen.at(-1) === 53).catch((e) => {
      throw new Error(`${e.message}; saw ${order.join(", ")}; state ${client.state}`);
    });
    assert.deepEqual(order, [
      "event 1",
      "event 2",
      "event 3",
      "gap history_evicted 4..43",
      ...range(44, 53).map((s) => `event ${s}`),
    ]);
    assert.equal(client.stats.gaps, 1);
    assert.equal(client.cursor.seq, 53);
    client.close();
  } finally {
    await front.stop();
    await small.stop();
  }
});

test("an ack goes out only after the handler's promise resolves", async () => {
  const user = "ack-user";
  let release;
  const r = recorder(user);
  const held = new Promise((res) => (release = res));
  r.client.on("agent_completed", () => held);
  r.client.connect();
  await eventually("live", () => r.client.state === "live");
  await publish(gw.addr, [{ user, type: "agent_completed", data: { answer: 42 } }]);
  await sleep(300);
  assert.equal(await unackedCount(user), 1, "not acked while the handler runs");
  assert.equal(r.seen.length, 0, "the * handler runs after the typed one");
  release();
  await eventually("the ack", async () => (await unackedCount(user)) === 0, 5000);
  assert.equal(r.seen.length, 1);
  assert.equal(r.client.stats.acks, 1);
  r.client.close();
});

test("a handler that throws is not passed: the event comes again after a reconnect, and nothing after it comes first", async () => {
  const user = "throw-user";
  const r = recorder(user);
  let failures = 0;
  r.client.on("tool_completed", (e) => {
    if (e.seq === 3 && failures === 0) {
      failures++;
      throw new Error("the app failed on event 3");
    }
  });
  r.client.connect();
  await eventually("live", () => r.client.state === "live");
  await publishNumbered(gw.addr, user, 1, 6, { ackEvery: 1 });
  await eventually("6 events", () => r.seen.length === 6);
  await sleep(100);
  assert.deepEqual(seqs(r.seen), range(1, 6));
  assert.equal(r.errors.length, 1);
  assert.equal(r.errors[0].kind, "handler");
  assert.equal(r.errors[0].event.seq, 3);
  assert.equal(r.client.stats.reconnects, 1);
  await eventually("every ack", async () => (await unackedCount(user)) === 0, 5000);
  r.client.close();
});

test("a cursor in storage lets a new client (a reloaded page) resume where the last one stopped", async () => {
  const user = "storage-user";
  const store = new Map();
  const storage = {
    getItem: (k) => store.get(k) ?? null,
    setItem: (k, v) => void store.set(k, v),
    removeItem: (k) => void store.delete(k),
  };
  const a = recorder(user, { storage });
  a.client.connect();
  await eventually("live", () => a.client.state === "live");
  await publishNumbered(gw.addr, user, 1, 10);
  await eventually("10 events", () => a.seen.length === 10);
  a.client.close();
  await publishNumbered(gw.addr, user, 11, 10);
  const b = recorder(user, { storage });
  assert.deepEqual(b.client.cursor, a.client.cursor, "read back from storage");
  b.client.connect();
  await eventually("the 10 missed", () => b.seen.length === 10);
  await eventually("live", () => b.client.state === "live");
  assert.deepEqual(seqs(b.seen), range(11, 20));
  assert.equal(JSON.parse(store.get("floodgate.cursor")).seq, 20);
  b.client.close();
  // A corrupted value is dropped, not trusted.
  store.set("floodgate.cursor", '{"epoch":"zz","seq":-1}');
  const c = recorder(user, { storage });
  assert.equal(c.client.cursor, null);
  assert.equal(store.has("floodgate.cursor"), false);
});

test("a token about to expire is renewed in-band, without a reconnect", async () => {
  const user = "renew-user";
  let issued = 0;
  const r = recorder(user, {
    getToken: () => {
      issued++;
      return token(user, 3);
    },
    renewBeforeSeconds: 2,
  });
  r.client.connect();
  await eventually("live", () => r.client.state === "live");
  // Each token lives 3 s and the gateway has no leeway: without renewal the connection would
  // be closed with 4001 after 3 s.
  await sleep(5000);
  await publishNumbered(gw.addr, user, 1, 5);
  await eventually("5 events", () => r.seen.length === 5);
  assert.ok(r.client.stats.tokenRenewals >= 2, `renewed ${r.client.stats.tokenRenewals} times`);
  assert.equal(r.client.stats.reconnects, 0);
  assert.ok(issued >= 3);
  r.client.close();
});

test("a user disconnected by the application (4002) stays disconnected", async () => {
  const user = "kicked-user";
  const r = recorder(user);
  r.client.connect();
  await eventually("live", () => r.client.state === "live");
  await disconnectUser(gw.addr, user);
  await eventually("closed", () => r.client.state === "closed");
  assert.match(r.client.closeReason, /4002/);
  await sleep(300);
  assert.equal(r.client.stats.connections, 1, "no reconnect");
});

test("without a cursor, the first connection receives the user's unacked events once, marked redelivered", async () => {
  const user = "unacked-user";
  await publish(gw.addr, [
    { user, type: "agent_completed", data: { answer: 1 } },
    { user, type: "agent_thinking", data: { delta: "x" } },
    { user, type: "agent_completed", data: { answer: 2 } },
  ]);
  const r = recorder(user);
  r.client.connect();
  await eventually("2 redelivered", () => r.seen.length === 2 && r.client.state === "live");
  assert.deepEqual(seqs(r.seen), [1, 3]);
  assert.ok(r.seen.every((e) => e.redelivered));
  assert.equal(r.client.stats.redelivered, 2);
  await eventually("acked", async () => (await unackedCount(user)) === 0, 5000);
  // After a cut the client resumes from its cursor: nothing again.
  fe.cut();
  await eventually("back", () => r.client.stats.reconnects === 1 && r.client.state === "live");
  await publishNumbered(gw.addr, user, 4, 1);
  await eventually("event 4", () => r.seen.length === 3);
  assert.deepEqual(seqs(r.seen), [1, 3, 4]);
  r.client.close();
});

test("options are checked, and the token's exp is read", () => {
  assert.throws(() => new FloodgateClient({ url: "ws://x/ws", onGap() {} }), /token/);
  assert.throws(() => new FloodgateClient({ url: "ws://x/ws", token: "t" }), /onGap/);
  assert.equal(tokenExpiry(token("u", 100)) - Math.floor(Date.now() / 1000) <= 100, true);
  assert.equal(tokenExpiry("not-a-jwt"), undefined);
});

test("a connection that never opens (a server that accepts and says nothing) is given up and tried again", async () => {
  const { createServer } = await import("node:net");
  const held = [];
  const silent = createServer((s) => void held.push(s));
  await new Promise((r) => silent.listen(0, "127.0.0.1", r));
  const states = [];
  const client = new FloodgateClient({
    url: `ws://127.0.0.1:${silent.address().port}/ws`,
    token: token("silent-user"),
    onGap() {},
    connectTimeoutMs: 200,
    backoff: { initialMs: 10, maxMs: 20 },
  });
  client.onState((s) => states.push(s));
  client.connect();
  await eventually("three attempts", () => held.length >= 3, 5000);
  client.close();
  for (const s of held) s.destroy();
  await new Promise((r) => silent.close(r));
  assert.deepEqual(states.slice(0, 4), ["connecting", "offline", "connecting", "offline"]);
  assert.equal(client.stats.connections, 0);
});
