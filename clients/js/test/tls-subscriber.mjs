// A subscriber in a Node process of its own, for tls.test.mjs: Node reads the CA it trusts
// besides its own roots from NODE_EXTRA_CA_CERTS at start, so the test runs the client here
// with that variable set (or not). It connects to WS_URL as USER and prints one JSON line per
// state it enters, `{"state":..}`. Once it has handled as many events as a number the test
// writes to its stdin (or after GIVE_UP_MS) it prints one line `{"done":..}` with every seq
// handled, the gaps and the errors, and exits.
import { FloodgateClient } from "../dist/index.js";
import { token } from "./harness.mjs";

const { WS_URL, USER, GIVE_UP_MS = "60000" } = process.env;
let expected = Infinity;
const seqs = [];
const gaps = [];
const errors = [];
const say = (v) => process.stdout.write(JSON.stringify(v) + "\n");
const client = new FloodgateClient({
  url: WS_URL,
  getToken: () => token(USER),
  onGap: (g) => void gaps.push(g),
  backoff: { initialMs: 20, maxMs: 200 },
  connectTimeoutMs: 2000,
});
const finish = () => {
  client.close();
  say({ done: true, seqs, gaps, errors: errors.map(String), stats: client.stats });
  process.exit(0);
};
client.on("*", (e) => {
  seqs.push(e.seq);
  if (seqs.length >= expected) finish();
});
process.stdin.setEncoding("utf8").on("data", (n) => {
  expected = Number(n);
  if (seqs.length >= expected) finish();
});
client.onState((state) => say({ state }));
client.onError((e) => errors.push(e));
setTimeout(finish, Number(GIVE_UP_MS));
client.connect();
