/**
 * The floodgate client for browsers and Node: connects to a gateway's `/ws` with a JWT, delivers
 * the user's events to handlers in `seq` order exactly once, resumes after every disconnect from
 * the last event the app processed, surfaces gaps, and acks events after their handler returned.
 *
 * The wire protocol is docs/PROTOCOL.md (version 4) of the floodgate repository.
 *
 * @packageDocumentation
 */

/** The five agent lifecycle event types the gateway knows by name. */
export type AgentEventType =
  | "agent_started"
  | "agent_thinking"
  | "tool_executing"
  | "tool_completed"
  | "agent_completed";

/** One event as the app's handler receives it. */
export interface FloodgateEvent<D = unknown, K extends string = string> {
  /** Per-user sequence number within `epoch`: 1 for the first event, then one more each. */
  seq: number;
  /** The event type: one of the agent types or a custom name. */
  type: K;
  /**
   * When it was emitted, in nanoseconds since the Unix epoch. A JavaScript number holds this to
   * about 256 ns.
   */
  ts: number;
  /** The run of the user's `seq` numbers this event belongs to (from `hello` or the last `gap`). */
  epoch: string;
  /** The event needs an ack: the client sends it once the handler has returned. */
  ack?: boolean;
  /** This frame stands for the `coalesced` events `seq - coalesced + 1 ..= seq`. */
  coalesced?: number;
  /** The agent run, when the emitter set one. */
  run_id?: string;
  /** The conversation thread, when the emitter set one. */
  thread_id?: string;
  /** The emitter's payload. */
  data?: D;
  /**
   * The gateway sent it again because no connection of the user acked it. This client had not
   * processed it: the first connection of a client without a cursor receives every unacked
   * event of the user this way.
   */
  redelivered: boolean;
}

/** A stretch of events the gateway cannot deliver; the app must decide what to do about it. */
export interface Gap {
  /** `history_evicted`, `epoch_changed`, `cursor_ahead`, `missed`, or `client_detected` (below). */
  reason: string;
  /** The epoch of what follows. */
  epoch: string;
  /** The first event that is gone. */
  from: number;
  /** The last event that is gone (`to < from` when none of the new epoch is). */
  to: number;
  /** With `epoch_changed`: the cursor's epoch. */
  previous_epoch?: string;
  /** With `epoch_changed`: the cursor's seq. */
  previous_seq?: number;
}

/** Where the client stands in the user's stream: the last event the app processed. */
export interface Cursor {
  /** The epoch of `seq`. */
  epoch: string;
  /** The last event processed (or skipped past by a gap). */
  seq: number;
}

/**
 * `connecting`: opening a connection. `replaying`: connected, receiving what was missed.
 * `live`: caught up. `offline`: disconnected, waiting to reconnect. `closed`: stopped for good
 * (see {@link FloodgateClient.closeReason}).
 */
export type ClientState = "connecting" | "replaying" | "live" | "offline" | "closed";

/** Counters an app can show; read them from {@link FloodgateClient.stats}. */
export interface ClientStats {
  /** Connections that reached `hello`. */
  connections: number;
  /** Connections opened after the first one. */
  reconnects: number;
  /** Events handed to handlers. */
  delivered: number;
  /** Event frames skipped because the app had processed them already. */
  duplicates: number;
  /** Of `delivered`: events the gateway sent again because nobody had acked them. */
  redelivered: number;
  /** Gaps handed to `onGap`. */
  gaps: number;
  /** Acks sent. */
  acks: number;
  /** Tokens renewed in-band without reconnecting. */
  tokenRenewals: number;
  /** Milliseconds from the last disconnect to `live` again (undefined before the first reconnect). */
  lastReconnectToLiveMs?: number;
}

/** Something a handler or the connection reported; the client keeps going unless it says so. */
export interface ClientError {
  /** `handler`: a handler threw (the event will come again); `protocol`: a frame made no sense. */
  kind: "handler" | "protocol";
  /** What went wrong. */
  error: unknown;
  /** The event, for `handler`. */
  event?: FloodgateEvent;
}

/** A handler: may return a promise; the next event waits for it. */
export type Handler<E> = (event: E) => void | Promise<void>;

/** The storage the client can keep its cursor in (`sessionStorage` fits). */
export interface CursorStorage {
  /** Reads a value. */
  getItem(key: string): string | null;
  /** Writes a value. */
  setItem(key: string, value: string): void;
  /** Deletes a value. */
  removeItem(key: string): void;
}

/** The part of the WebSocket API the client uses (the browser's, Node's global, or `ws`). */
export interface WebSocketLike {
  /** 1 when open. */
  readonly readyState: number;
  /** Sends a text frame. */
  send(data: string): void;
  /** Starts the closing handshake. */
  close(code?: number, reason?: string): void;
  /** Set by the client. */
  onopen: ((ev: unknown) => void) | null;
  /** Set by the client. */
  onmessage: ((ev: { data: unknown }) => void) | null;
  /** Set by the client. */
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  /** Set by the client. */
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Options of {@link FloodgateClient}. */
export interface ClientOptions {
  /** The gateway's WebSocket endpoint, such as `wss://gateway.example.com/ws`. */
  url: string;
  /** A JWT. Give this or `getToken`. */
  token?: string;
  /**
   * Called for a token before each connection whose token is missing or expires within
   * `renewBeforeSeconds`, and that long before a live connection's token expires (the new token
   * goes in-band, without reconnecting).
   */
  getToken?: () => string | Promise<string>;
  /** How long before `exp` a token is renewed. Default 60. */
  renewBeforeSeconds?: number;
  /**
   * Called, in order with the events, when the gateway says events are gone. Required: an app
   * that shows a conversation must decide what a hole in it means (reload it, show a notice).
   */
  onGap: Handler<Gap>;
  /** Keeps the cursor here (for example `sessionStorage`) so a reloaded page resumes. */
  storage?: CursorStorage | null;
  /** The key under `storage`. Default `floodgate.cursor`. */
  storageKey?: string;
  /**
   * Without a cursor: `live` (default) starts with the events after connecting; `retained`
   * asks for every event the gateway still holds.
   */
  start?: "live" | "retained";
  /** Reconnect delays: exponential from `initialMs` (250) by `factor` (2) up to `maxMs` (15000), each with jitter down to half. */
  backoff?: { initialMs?: number; maxMs?: number; factor?: number };
  /**
   * A connection not open within this many milliseconds is given up and tried again (a
   * black-holed network, or a proxy that accepts and never answers, would otherwise hold it in
   * `connecting` for as long as the platform's TCP timeout, or for ever). Default 10000.
   */
  connectTimeoutMs?: number;
  /** The WebSocket implementation; default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
}

/** Handlers by event type; `"*"` receives every event. */
type Registry = Map<string, Set<Handler<FloodgateEvent>>>;

/** One WebSocket connection and what its own frames told the client. */
interface Connection {
  ws: WebSocketLike;
  /** The cursor the connection asked to resume from (null: none). */
  resumedFrom: Cursor | null;
  /** The epoch of the events arriving on it. */
  epoch: string | null;
  /** The epoch its `hello` named. */
  helloEpoch: string | null;
  /** When its `hello` came (ms). */
  helloAt: number;
  /** Events it delivered to handlers. */
  delivered: number;
  /** `hello.last_seq`: the connection is live once the cursor reaches it. */
  liveAt: number;
  /** Redelivered event frames still to come. */
  redeliveries: number;
  /** No more frames of this connection are handled (a handler failed on it or after it). */
  abandoned: boolean;
}

const OPEN = 1;
const DEFAULT_KEY = "floodgate.cursor";

/**
 * A client of one user's event stream. Create it, register handlers, call
 * {@link FloodgateClient.connect}.
 *
 * Guarantees, as long as the gateway keeps the events (its history, spool or Redis log):
 * every event reaches the handlers once, in `seq` order, across reconnects and (with `storage`)
 * page reloads; an ack goes out only after the event's handlers returned (or their promises
 * resolved); what the gateway no longer has arrives as a {@link Gap} through `onGap`, in order.
 * A handler that throws is not acked or passed: the connection is closed and the event comes
 * again after the reconnect.
 *
 * `D` maps event types to their `data` types, for typed handlers.
 */
export class FloodgateClient<D extends Record<string, unknown> = Record<string, unknown>> {
  private readonly opts: ClientOptions;
  private readonly handlers: Registry = new Map();
  private readonly stateListeners = new Set<(s: ClientState) => void>();
  private readonly errorListeners = new Set<(e: ClientError) => void>();
  private readonly WS: WebSocketConstructor;
  private token: string | undefined;
  private conn: Connection | null = null;
  private queue: { conn: Connection; text: string }[] = [];
  private pumping = false;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private renewTimer: ReturnType<typeof setTimeout> | undefined;
  private offlineSince: number | undefined;
  private stopped = false;
  private opening = false;
  private currentState: ClientState = "offline";
  private currentCursor: Cursor | null = null;
  private reasonClosed: string | undefined;

  /** Counters, updated as things happen. */
  readonly stats: ClientStats = {
    connections: 0,
    reconnects: 0,
    delivered: 0,
    duplicates: 0,
    redelivered: 0,
    gaps: 0,
    acks: 0,
    tokenRenewals: 0,
  };

  /** Checks the options; opens nothing yet. */
  constructor(options: ClientOptions) {
    if (!options || typeof options.url !== "string") throw new TypeError("floodgate: `url` is required");
    if (!options.token && !options.getToken) throw new TypeError("floodgate: give `token` or `getToken`");
    if (typeof options.onGap !== "function") throw new TypeError("floodgate: `onGap` is required");
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) {
      throw new TypeError("floodgate: no WebSocket here; pass `WebSocket` (Node 20: run with --experimental-websocket, or use the `ws` package)");
    }
    this.opts = options;
    this.WS = WS;
    this.token = options.token;
    this.currentCursor = this.loadCursor();
  }

  /** The current state. */
  get state(): ClientState {
    return this.currentState;
  }

  /** The last event processed (or gap passed), or null before the first. */
  get cursor(): Cursor | null {
    return this.currentCursor ? { ...this.currentCursor } : null;
  }

  /** Why the client is `closed`, if it is. */
  get closeReason(): string | undefined {
    return this.reasonClosed;
  }

  /**
   * Registers a handler for one event type (`"*"`: every event). Returns a function that
   * removes it. Handlers of the type run first, then `"*"` handlers, one after the other.
   */
  on<K extends keyof D & string>(type: K, handler: Handler<FloodgateEvent<D[K], K>>): () => void;
  on(type: AgentEventType | "*" | (string & {}), handler: Handler<FloodgateEvent>): () => void;
  on(type: string, handler: Handler<FloodgateEvent<never>>): () => void {
    let set = this.handlers.get(type);
    if (!set) this.handlers.set(type, (set = new Set()));
    const h = handler as Handler<FloodgateEvent>;
    set.add(h);
    return () => void set!.delete(h);
  }

  /** Called with every state change. Returns a function that removes it. */
  onState(listener: (state: ClientState) => void): () => void {
    this.stateListeners.add(listener);
    return () => void this.stateListeners.delete(listener);
  }

  /** Called when a handler throws or a frame makes no sense. Returns a function that removes it. */
  onError(listener: (error: ClientError) => void): () => void {
    this.errorListeners.add(listener);
    return () => void this.errorListeners.delete(listener);
  }

  /** Opens the connection (and keeps one open until {@link close}). */
  connect(): void {
    if (this.stopped) throw new Error("floodgate: this client was closed; create a new one");
    if (this.opening || this.conn || this.reconnectTimer !== undefined) return;
    void this.open();
  }

  /** Closes the connection for good (code 1000). The cursor stays in `storage`. */
  close(): void {
    this.stop("closed by the app");
    if (this.conn && this.conn.ws.readyState <= OPEN) this.conn.ws.close(1000, "bye");
  }

  /** Forgets the cursor (and clears it from `storage`): the next connection starts afresh. */
  resetCursor(): void {
    this.currentCursor = null;
    this.opts.storage?.removeItem(this.storageKey());
  }

  private storageKey(): string {
    return this.opts.storageKey ?? DEFAULT_KEY;
  }

  private loadCursor(): Cursor | null {
    const raw = this.opts.storage?.getItem(this.storageKey());
    if (!raw) return null;
    try {
      const c = JSON.parse(raw) as Cursor;
      if (typeof c.epoch === "string" && /^[0-9a-f]{1,16}$/.test(c.epoch) && Number.isSafeInteger(c.seq) && c.seq >= 0) {
        return { epoch: c.epoch, seq: c.seq };
      }
    } catch {
      // not ours, or corrupted: start without it
    }
    this.opts.storage?.removeItem(this.storageKey());
    return null;
  }

  private setCursor(c: Cursor): void {
    this.currentCursor = c;
    this.opts.storage?.setItem(this.storageKey(), JSON.stringify(c));
  }

  private setState(s: ClientState): void {
    if (s === this.currentState) return;
    this.currentState = s;
    if (s === "live" && this.offlineSince !== undefined) {
      this.stats.lastReconnectToLiveMs = now() - this.offlineSince;
      this.offlineSince = undefined;
    }
    for (const l of this.stateListeners) l(s);
  }

  private report(e: ClientError): void {
    if (this.errorListeners.size === 0 && e.kind === "handler") console.error("floodgate: a handler failed", e.error);
    for (const l of this.errorListeners) l(e);
  }

  private stop(reason: string): void {
    this.stopped = true;
    this.reasonClosed = reason;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.renewTimer);
    this.reconnectTimer = undefined;
    this.setState("closed");
  }

  /** A token that is not about to expire: the given one, or a fresh one from `getToken`. */
  private async freshToken(): Promise<string | null> {
    const soon = now() / 1000 + (this.opts.renewBeforeSeconds ?? 60);
    if (this.token && (tokenExpiry(this.token) ?? Infinity) > soon) return this.token;
    if (this.opts.getToken) {
      this.token = await this.opts.getToken();
      return this.token;
    }
    if (this.token && (tokenExpiry(this.token) ?? Infinity) > now() / 1000) return this.token;
    return null;
  }

  private async open(): Promise<void> {
    this.setState("connecting");
    let token: string | null;
    this.opening = true;
    try {
      token = await this.freshToken();
    } catch (error) {
      this.report({ kind: "protocol", error });
      return this.scheduleReconnect();
    } finally {
      this.opening = false;
    }
    if (this.stopped) return;
    if (token === null) return this.stop("the token expired and there is no getToken to renew it");
    const cursor = this.currentCursor;
    const query: string[] = [`token=${encodeURIComponent(token)}`];
    if (cursor) query.push(`since=${cursor.seq}`, `epoch=${cursor.epoch}`);
    else if (this.opts.start === "retained") query.push("since=0");
    const url = this.opts.url + (this.opts.url.includes("?") ? "&" : "?") + query.join("&");
    let ws: WebSocketLike;
    try {
      ws = new this.WS(url);
    } catch (error) {
      this.report({ kind: "protocol", error });
      return this.scheduleReconnect();
    }
    const conn: Connection = {
      ws,
      resumedFrom: cursor,
      epoch: null,
      helloEpoch: null,
      helloAt: 0,
      delivered: 0,
      liveAt: 0,
      redeliveries: 0,
      abandoned: false,
    };
    this.conn = conn;
    const timer = setTimeout(() => {
      if (conn !== this.conn || ws.readyState === OPEN) return;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close();
      } catch {
        // closing a socket that never opened may throw in some implementations
      }
      this.closed(conn, 1006, "not open within connectTimeoutMs");
    }, this.opts.connectTimeoutMs ?? 10_000);
    ws.onopen = () => clearTimeout(timer);
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") return;
      this.queue.push({ conn, text: ev.data });
      if (!this.pumping) void this.pump();
    };
    ws.onclose = (ev) => {
      clearTimeout(timer);
      this.closed(conn, ev.code, ev.reason);
    };
    ws.onerror = () => {
      // the close event follows and says what to do
    };
  }

  private closed(conn: Connection, code: number, reason: string): void {
    if (conn !== this.conn) return;
    this.conn = null;
    clearTimeout(this.renewTimer);
    // Back off further unless the connection did some good (delivered an event, or stayed up
    // for a while after its hello): a handler that keeps failing, or a gateway that accepts and
    // drops, must not be hammered.
    if (!conn.abandoned && (conn.delivered > 0 || (conn.helloAt > 0 && now() - conn.helloAt >= 2_000))) this.attempt = 0;
    if (this.offlineSince === undefined && this.stats.connections > 0) this.offlineSince = now();
    if (this.stopped) return;
    if (code === 4002) return this.stop(`the application disconnected this user (4002 ${reason})`);
    if (code === 4001 || code === 4003) {
      if (!this.opts.getToken) return this.stop(`the token was refused and there is no getToken (${code} ${reason})`);
      this.token = undefined;
    }
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.stopped) return;
    this.setState("offline");
    const b = this.opts.backoff ?? {};
    const base = Math.min(b.maxMs ?? 15000, (b.initialMs ?? 250) * Math.pow(b.factor ?? 2, this.attempt));
    this.attempt++;
    const delay = base / 2 + (Math.random() * base) / 2;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.open();
    }, delay);
  }

  /** Handles queued frames one at a time, awaiting handlers that return promises. */
  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      while (this.queue.length > 0) {
        const { conn, text } = this.queue.shift()!;
        if (conn.abandoned || this.stopped) continue;
        const pending = this.frame(conn, text);
        if (pending) await pending;
      }
    } finally {
      this.pumping = false;
    }
  }

  /** One frame; returns a promise only when a handler did. */
  private frame(conn: Connection, text: string): Promise<void> | void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(text);
    } catch (error) {
      return this.report({ kind: "protocol", error });
    }
    if (typeof msg.seq === "number") return this.event(conn, msg as unknown as FloodgateEvent);
    switch (msg.type) {
      case "hello":
        return this.hello(conn, msg.epoch as string, msg.last_seq as number);
      case "redelivery":
        conn.redeliveries = msg.count as number;
        return this.checkLive(conn);
      case "gap":
        return this.gap(conn, msg as unknown as Gap);
      case "auth":
        if (msg.ok === true) this.stats.tokenRenewals++;
        return;
      default:
        return; // frame types of later protocol versions
    }
  }

  private hello(conn: Connection, epoch: string, lastSeq: number): void {
    conn.epoch = epoch;
    conn.helloEpoch = epoch;
    conn.helloAt = now();
    conn.liveAt = lastSeq;
    this.stats.connections++;
    if (this.stats.connections > 1) this.stats.reconnects++;
    if (!conn.resumedFrom) {
      this.setCursor({ epoch, seq: this.opts.start === "retained" ? 0 : lastSeq });
    }
    this.scheduleRenewal();
    this.checkLive(conn);
  }

  private checkLive(conn: Connection): void {
    if (conn !== this.conn) return;
    const c = this.currentCursor;
    const caughtUp = c !== null && c.epoch === conn.epoch && c.seq >= conn.liveAt && conn.redeliveries === 0;
    this.setState(caughtUp ? "live" : "replaying");
  }

  private gap(conn: Connection, gap: Gap): Promise<void> | void {
    conn.epoch = gap.epoch;
    this.stats.gaps++;
    const next = gap.reason === "cursor_ahead" ? gap.from - 1 : Math.max(gap.to, gap.from - 1);
    const done = () => {
      this.setCursor({ epoch: gap.epoch, seq: next });
      // A stream that started again while live (Redis lost it): live from its start.
      if (gap.epoch !== conn.helloEpoch) conn.liveAt = next;
      this.checkLive(conn);
    };
    return this.run(conn, this.opts.onGap, gap, done);
  }

  private event(conn: Connection, raw: FloodgateEvent): Promise<void> | void {
    const redelivery = conn.redeliveries > 0;
    if (redelivery) conn.redeliveries--;
    const epoch = conn.epoch;
    if (epoch === null) return this.report({ kind: "protocol", error: new Error("an event before hello") });
    const cursor = this.currentCursor;
    const seq = raw.seq;
    const first = seq - (raw.coalesced ?? 1) + 1;
    const ev = raw as FloodgateEvent;
    ev.epoch = epoch;
    ev.redelivered = false;
    if (cursor && cursor.epoch === epoch && seq <= cursor.seq) {
      if (redelivery && !conn.resumedFrom) {
        // A fresh client's first connection: unacked events from before it, new to this app.
        ev.redelivered = true;
        this.stats.redelivered++;
        return this.deliver(conn, ev, false);
      }
      this.stats.duplicates++;
      if (ev.ack) this.sendAck(conn, seq); // processed before; its ack was lost
      if (redelivery) this.checkLive(conn);
      return;
    }
    if (cursor && cursor.epoch === epoch && first > cursor.seq + 1) {
      // The gateway promises a gap frame before any hole; say so rather than hide one.
      const gap: Gap = { reason: "client_detected", epoch, from: cursor.seq + 1, to: first - 1 };
      this.report({ kind: "protocol", error: new Error(`events ${gap.from}..=${gap.to} missing without a gap frame`) });
      const p = this.gap(conn, gap);
      if (p) return p.then(() => this.deliver(conn, ev, true));
    }
    return this.deliver(conn, ev, true);
  }

  private deliver(conn: Connection, ev: FloodgateEvent, advance: boolean): Promise<void> | void {
    const done = () => {
      this.stats.delivered++;
      conn.delivered++;
      if (advance) this.setCursor({ epoch: ev.epoch, seq: ev.seq });
      if (ev.ack) this.sendAck(conn, ev.seq);
      this.checkLive(conn);
    };
    const typed = this.handlers.get(ev.type);
    const any = this.handlers.get("*");
    const all = [...(typed ?? []), ...(any ?? [])];
    return this.runAll(conn, all, ev, done);
  }

  private runAll(conn: Connection, hs: Handler<FloodgateEvent>[], ev: FloodgateEvent, done: () => void): Promise<void> | void {
    for (let i = 0; i < hs.length; i++) {
      let r: void | Promise<void>;
      try {
        r = hs[i](ev);
      } catch (error) {
        return this.failed(conn, error, ev);
      }
      if (r && typeof (r as Promise<void>).then === "function") {
        const rest = hs.slice(i + 1);
        return (r as Promise<void>).then(
          () => this.runAll(conn, rest, ev, done),
          (error) => this.failed(conn, error, ev),
        );
      }
    }
    done();
  }

  private run<T>(conn: Connection, h: Handler<T>, value: T, done: () => void): Promise<void> | void {
    let r: void | Promise<void>;
    try {
      r = h(value);
    } catch (error) {
      return this.failed(conn, error);
    }
    if (r && typeof (r as Promise<void>).then === "function") {
      return (r as Promise<void>).then(done, (error) => this.failed(conn, error));
    }
    done();
  }

  /** A handler failed: nothing more of this connection is handled; a new one resumes at the event. */
  private failed(conn: Connection, error: unknown, event?: FloodgateEvent): void {
    conn.abandoned = true;
    this.report({ kind: "handler", error, event });
    // Frames after the failed one (also of a newer connection) must not be handled before it.
    const current = this.conn;
    if (current) {
      current.abandoned = true;
      if (current.ws.readyState <= OPEN) current.ws.close(4000, "handler failed");
    }
  }

  private sendAck(conn: Connection, seq: number): void {
    if (conn.ws.readyState !== OPEN) return; // the gateway sends it again on the next connection
    conn.ws.send(`{"ack":${seq}}`);
    this.stats.acks++;
  }

  /** Sends a fresh token in-band `renewBeforeSeconds` before the current one expires. */
  private scheduleRenewal(): void {
    clearTimeout(this.renewTimer);
    const exp = this.token ? tokenExpiry(this.token) : undefined;
    if (exp === undefined || !this.opts.getToken) return;
    const wait = Math.max(0, (exp - (this.opts.renewBeforeSeconds ?? 60)) * 1000 - now());
    this.renewTimer = setTimeout(() => void this.renew(), Math.min(wait, 2 ** 31 - 1));
  }

  private async renew(): Promise<void> {
    const conn = this.conn;
    if (!conn || !this.opts.getToken) return;
    try {
      this.token = await this.opts.getToken();
    } catch (error) {
      this.report({ kind: "protocol", error });
      this.renewTimer = setTimeout(() => void this.renew(), 5000);
      return;
    }
    if (conn !== this.conn || conn.ws.readyState !== OPEN) return;
    conn.ws.send(JSON.stringify({ type: "auth", token: this.token }));
    this.scheduleRenewal();
  }
}

/** The `exp` claim of a JWT, in seconds, or undefined when it has none or is not a JWT. */
export function tokenExpiry(token: string): number | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4));
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

function now(): number {
  return Date.now();
}
