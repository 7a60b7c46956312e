// The fan-out workload on Node's `ws` package, written the way its users would: once every
// client is connected, each connection is sent its share of the events with ws.send(), waiting
// for the socket to drain when more than 1 MiB is buffered. Frames:
// {"seq":S,"type":"agent_thinking","ts":T,"data":{"pad":"xx.."}} with ts in unix ns.
'use strict';
const { WebSocketServer } = require('ws');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, v, i, a) => (i % 2 === 0 ? acc.concat([[v.replace(/^--/, ''), a[i + 1]]]) : acc), [])
);
const port = Number(args.port);
const connections = Number(args.connections || 64);
const events = Number(args.events || 2000000);
const payloadBytes = Number(args['payload-bytes'] || 150);
const pad = 'x'.repeat(Math.max(1, payloadBytes - 80));
const origin = BigInt(Date.now()) * 1000000n - process.hrtime.bigint();
const unixNs = () => (origin + process.hrtime.bigint()).toString();

const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });
const clients = [];
wss.on('listening', () => console.log(`node-ws listening on 127.0.0.1:${port}`));
wss.on('connection', (ws) => {
  ws._socket.setNoDelay(true);
  clients.push(ws);
  if (clients.length === connections) start();
});

function share(c) {
  return Math.floor(events / connections) + (c < events % connections ? 1 : 0);
}

function start() {
  clients.forEach((ws, c) => {
    const n = share(c);
    let seq = 0;
    const pump = () => {
      while (seq < n) {
        seq += 1;
        ws.send(`{"seq":${seq},"type":"agent_thinking","ts":${unixNs()},"data":{"pad":"${pad}"}}`);
        if (ws.bufferedAmount > 1 << 20) {
          ws._socket.once('drain', pump);
          return;
        }
      }
    };
    pump();
  });
}
