// signaling.js: a browser client for the signaling service, protocol v2 (docs/protocol.md).
// An ES module, no build step, no dependency: what sdk/python/signaling_sdk does, for browsers.
//
//   const service = new ServiceClient("http://127.0.0.1:8001");
//   const identity = await service.signIn();
//   const session = await Session.open("ws://127.0.0.1:8080", room, identity, "client-1", { role: "client" });
//   const [worker] = await session.discover({ role: "worker", tags: ["gpu"] });
//   const link = await connect(session, worker.peer_id);  // an open RTCDataChannel in link.channel

// Errors ---------------------------------------------------------------------------------

/** A failure the service reported: `code` is stable, `reason` is for people. */
export class SignalingError extends Error {
  constructor(code, reason = "", { retryAfter = null } = {}) {
    super(reason ? `${code}: ${reason}` : code);
    this.name = new.target.name;
    this.code = code;
    this.reason = reason;
    this.retryAfter = retryAfter; // seconds, when the service says how long to wait
  }
}
/** The ID token was refused: sign in again. */
export class AuthError extends SignalingError {}
/** ROOM_NOT_FOUND, INVALID_ROOM_TOKEN, ROOM_EXPIRED, ROOM_FULL, NOT_ROOM_CREATOR. */
export class RoomError extends SignalingError {}
/** PEER_ID_TAKEN, PEER_NOT_FOUND, SENDER_MISMATCH, ... */
export class PeerError extends SignalingError {}
export class DeliveryFailed extends SignalingError {}
/** The target has not confirmed what it has yet (PEER_BUSY): this message was not sent; send it again shortly. */
export class PeerBusy extends DeliveryFailed {}
export class QueueFull extends SignalingError {}
export class RateLimited extends SignalingError {}
/** SERVER_BUSY, STORAGE_UNAVAILABLE, AUTH_PROVIDER_UNAVAILABLE, INTERNAL_ERROR: retry later. */
export class Unavailable extends SignalingError {}
/** A malformed or out-of-place request: a bug in the caller. */
export class InvalidRequest extends SignalingError {}
export class Expired extends SignalingError {}
/** The session ended and cannot be resumed. */
export class SessionLost extends SignalingError {}
/** The peer connection could not be established (NEGOTIATION_FAILED). */
export class NegotiationFailed extends SignalingError {}
/** The data channel closed before what was awaited came (CHANNEL_CLOSED). */
export class ChannelClosed extends SignalingError {}
/** Every slot of the worker you `claim` is taken (ALREADY_CLAIMED); who holds it is not said. */
export class AlreadyClaimed extends SignalingError {}
/** No live lease of yours has that id (LEASE_NOT_FOUND): it expired, was released, or its worker left. */
export class LeaseNotFound extends SignalingError {}

const BY_CODE = {
  INVALID_ID_TOKEN: AuthError, UNSUPPORTED_AUTH: AuthError,
  ROOM_NOT_FOUND: RoomError, INVALID_ROOM_TOKEN: RoomError, ROOM_EXPIRED: RoomError,
  ROOM_FULL: RoomError, NOT_ROOM_CREATOR: RoomError,
  PEER_ID_TAKEN: PeerError, PEER_NOT_FOUND: PeerError, SENDER_MISMATCH: PeerError,
  UNSUPPORTED_BY_PEER: PeerError, PEER_ERROR: PeerError,
  DELIVERY_FAILED: DeliveryFailed, PEER_BUSY: PeerBusy, QUEUE_FULL: QueueFull, RATE_LIMITED: RateLimited,
  SERVER_BUSY: Unavailable, STORAGE_UNAVAILABLE: Unavailable,
  AUTH_PROVIDER_UNAVAILABLE: Unavailable, INTERNAL_ERROR: Unavailable,
  RESUME_FAILED: SessionLost,
  UNKNOWN_MESSAGE_TYPE: InvalidRequest, NOT_REGISTERED: InvalidRequest,
  ALREADY_REGISTERED: InvalidRequest, ROUTE_NOT_FOUND: InvalidRequest, METHOD_NOT_ALLOWED: InvalidRequest,
  NEGOTIATION_FAILED: NegotiationFailed, CHANNEL_CLOSED: ChannelClosed,
  ALREADY_CLAIMED: AlreadyClaimed, LEASE_NOT_FOUND: LeaseNotFound,
};

/** The typed error for a service error code (SignalingError itself for unknown codes). */
export function errorFrom(code, reason = "", options = {}) {
  const Type = BY_CODE[code] || (code.startsWith("INVALID") ? InvalidRequest : SignalingError);
  return new Type(code, reason, options);
}

/** The typed error in an `{"type": "error", code, reason, retry_after_ms}` frame. */
export function errorFromFrame(frame) {
  const wait = frame.retry_after_ms;
  const retryAfter = typeof wait === "number" && wait > 0 ? wait / 1000 : null;
  return errorFrom(String(frame.code || "INTERNAL_ERROR"), String(frame.reason || ""), { retryAfter });
}

// HTTP APIs ------------------------------------------------------------------------------

/** The HTTP APIs at `apiUrl` (`make dev`: http://127.0.0.1:8001). */
export class ServiceClient {
  constructor(apiUrl, { timeoutMs = 10000 } = {}) {
    this.apiUrl = apiUrl.replace(/\/+$/, "");
    this.timeoutMs = timeoutMs;
  }

  /** A new anonymous identity: `{idToken, username}`. */
  async signIn() {
    const body = await this._call("POST", "/anonymous-signin");
    return { idToken: String(body.id_token), username: String(body.username) };
  }

  /** A new room owned by `identity`: `{roomId, token, expiresAt, wsUrl}`. */
  async createRoom(identity) {
    const body = await this._call("POST", "/create-room", identity);
    return { roomId: String(body.room_id), token: String(body.token), expiresAt: Number(body.expires_at), wsUrl: String(body.ws_url || "") };
  }

  /** A room's status and peers (its creator only). */
  room(identity, roomId) { return this._call("GET", `/rooms/${encodeURIComponent(roomId)}`, identity); }

  /** Delete a room (its creator only). */
  deleteRoom(identity, roomId) { return this._call("DELETE", `/rooms/${encodeURIComponent(roomId)}`, identity); }

  /** `{ice_servers: [...], ttl}`: STUN, and TURN with expiring credentials. */
  iceServers(identity) { return this._call("GET", "/ice-servers", identity); }

  async _call(method, path, identity = null) {
    const headers = identity ? { Authorization: `Bearer ${identity.idToken}` } : {};
    let response;
    try {
      response = await fetch(this.apiUrl + path, { method, headers, signal: AbortSignal.timeout(this.timeoutMs) });
    } catch (exc) {
      // Unreachable, timed out, or refused by the browser (CORS): fetch does not say which.
      throw errorFrom("SERVER_BUSY", `${method} ${path}: the service at ${this.apiUrl} did not answer (${exc.name}: ${exc.message}); is it running, and does it allow this page's origin?`);
    }
    let body = {};
    try { body = await response.json(); } catch { body = {}; }
    if (response.ok) {
      if (body === null || typeof body !== "object" || Array.isArray(body)) throw new SignalingError("INTERNAL_ERROR", `${method} ${path}: not a JSON object`);
      return body;
    }
    const retry = response.headers.get("Retry-After");
    throw errorFrom(String(body.error || `HTTP_${response.status}`), String(body.detail || response.statusText), {
      retryAfter: retry && /^\d+$/.test(retry) ? Number(retry) : null,
    });
  }
}

// Session --------------------------------------------------------------------------------

const TERMINAL_CLOSE = (code) => code >= 4000 && code < 4500;
const MAX_REDIRECTS = 3;
const SEEN_MESSAGES = 4096;
const RETRYABLE = new Set(["SERVER_BUSY", "STORAGE_UNAVAILABLE", "RATE_LIMITED", "TOO_MANY_REDIRECTS"]);

/** An async queue: `put` items, `get` them in order; once `fail`ed, every `get` rejects. */
class Queue {
  constructor() { this.items = []; this.waiters = []; this.error = null; }
  put(item) { const w = this.waiters.shift(); if (w) w.resolve(item); else this.items.push(item); }
  fail(error) { this.error = error; for (const w of this.waiters.splice(0)) w.reject(error); }
  get() {
    if (this.items.length) return Promise.resolve(this.items.shift());
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A lease is renewed at 2/3 of the time it has left (a renewal that fails has the last
// third to try again), and never sooner than MIN_RENEW_MS after the previous one.
const RENEW_AT = 2 / 3;
const MIN_RENEW_MS = 1000;

/** A claim the relay granted (`session.claim`): this session holds one of `peerId`'s
 * `max_claims` slots until `expiresAt` (epoch seconds, the relay's clock) unless renewed.
 * `ended` is null while it is live, then why it ended: the relay's `lease_ended` reason
 * (`released`, `expired`, `holder_left`, `peer_left`: the worker left), `released` for its
 * own release, or `left` when the session ended. `keepRenewed()` renews it until it ends or
 * is released; `session.withClaim` does that around a callback and releases it after. */
export class Lease extends EventTarget {
  constructor(session, peerId, leaseId, expiresAt, ttlSeconds) {
    super();
    this.session = session;
    this.peerId = peerId;
    this.leaseId = leaseId;
    this.expiresAt = expiresAt;
    this.ttlSeconds = ttlSeconds; // what renewals ask for (undefined: the relay's default)
    this.ended = null;
    this._timer = null;
  }

  /** Extend the lease by `ttlSeconds` from now (default: what it was claimed with);
   * LeaseNotFound once it has ended (without asking the relay). */
  async renew(ttlSeconds = this.ttlSeconds) {
    if (this.ended !== null) throw new LeaseNotFound("LEASE_NOT_FOUND", `the lease ended (${this.ended})`);
    const message = { type: "renew", lease_id: this.leaseId };
    if (ttlSeconds !== undefined && ttlSeconds !== null) message.ttl_seconds = ttlSeconds;
    try {
      await this.session.send(message); // its `claimed` answer updates expiresAt
    } catch (exc) {
      if (exc instanceof LeaseNotFound) this._end("expired"); // lapsed (or its end is on the way)
      throw exc;
    }
    return this;
  }

  /** Give the slot back (the worker hears `lease_ended`); nothing once the lease has ended. */
  async release() {
    this._stopRenewing();
    if (this.ended !== null) return;
    try {
      await this.session.send({ type: "release", lease_id: this.leaseId });
    } catch (exc) {
      if (exc instanceof LeaseNotFound) { this._end("expired"); return; }
      if (exc instanceof SessionLost) return; // the relay ends a leaving holder's leases
      throw exc;
    }
  }

  /** Renew before each expiry until the lease ends or is released. */
  keepRenewed() {
    if (this._timer !== null || this.ended !== null) return this;
    const schedule = () => {
      const delay = Math.max(MIN_RENEW_MS, (this.expiresAt * 1000 - Date.now()) * RENEW_AT);
      this._timer = setTimeout(async () => {
        try {
          await this.renew();
        } catch (exc) {
          if (exc instanceof LeaseNotFound || exc instanceof SessionLost) { this._timer = null; return; }
          // RATE_LIMITED past its retries, SERVER_BUSY, ...: try again in the time left
        }
        if (this.ended === null && this._timer !== null) schedule();
      }, delay);
    };
    schedule();
    return this;
  }

  _stopRenewing() {
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = null;
  }

  _end(reason) {
    this._stopRenewing();
    this.session._leases.delete(this.leaseId);
    if (this.ended !== null) return;
    this.ended = reason;
    this.dispatchEvent(new CustomEvent("ended", { detail: reason }));
  }
}

/** One registered peer in one room over the relay's WebSocket, that survives drops: every
 * message is sent with an `id` and `send` resolves with the service's answer (ack, peer_list)
 * or rejects with a typed error; after a dropped socket or `go_away` it resumes with its
 * resume token and the last `seq` seen, and sends again what had no answer yet. */
export class Session extends EventTarget {
  constructor(url, room, identity, peerId, { role = "peer", metadata = {}, maxClaims = null, openTimeoutMs = 10000, backoff = {} } = {}) {
    super();
    this.entryUrl = url;
    this.url = room.wsUrl || url;
    this.room = room;
    this.identity = identity;
    this.peerId = peerId;
    this.role = role;
    this.metadata = { ...metadata };
    this.maxClaims = maxClaims; // a worker: how many clients may book it at once (the relay's default 1)
    this.openTimeoutMs = openTimeoutMs;
    this.backoff = { initialMs: 200, maximumMs: 10000, attempts: 30, rateLimitedRetries: 3, ...backoff };
    this.resumeToken = null;
    this.lastSeq = 0;
    this.peers = new Map();
    this.iceServers = [];
    this.resumes = 0;
    this._ids = 0;
    // getRandomValues, not randomUUID: the latter exists in secure contexts only.
    this._prefix = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
    this._pending = new Map();
    this._leases = new Map(); // the live leases this session holds, by lease id
    this._seen = new Set();
    this._inbox = new Queue();
    this._signals = new Queue();
    this._ws = null;
    this._closing = false;
    this._reconnectAfterMs = null;
  }

  /** Connect and register; rejects with the typed error if the registration is refused. */
  static async open(url, room, identity, peerId, options = {}) {
    const session = new Session(url, room, identity, peerId, options);
    const [ws, registered] = await session._register(false);
    session._attach(ws, registered);
    return session;
  }

  /** Send `message` with a fresh id; resolves with its answer (`{type: "ack", queued}`,
   * `peer_list`, `pong`); waits through reconnections, RATE_LIMITED and PEER_BUSY. */
  async send(message) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this._sendOnce(message);
      } catch (exc) {
        const again = exc instanceof RateLimited || exc instanceof PeerBusy; // not sent: may be sent again
        if (!again || attempt >= this.backoff.rateLimitedRetries) throw exc;
        // The relay's hint as it is; without one, doubling up to the maximum.
        const wait = exc.retryAfter ? exc.retryAfter * 1000 : Math.min(this.backoff.initialMs * 2 ** attempt, this.backoff.maximumMs);
        await sleep(wait * (1 + Math.random() * 0.2));
      }
    }
  }

  _sendOnce(message) {
    if (this._closing) return Promise.reject(new SessionLost("CLOSED", "the session is closed"));
    const id = `${this._prefix}-${++this._ids}`;
    const full = { id, ...message }; // the id first: see the Python SDK's session.py
    return new Promise((resolve, reject) => {
      this._pending.set(id, { message: full, resolve, reject });
      if (this._ws && this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(full));
    });
  }

  /** An application message to one peer (held for it up to `ttlSeconds` if not here yet). */
  sendTo(peerId, payload, { ttlSeconds } = {}) {
    const message = { type: "peer_message", to_peer_id: peerId, payload };
    if (ttlSeconds !== undefined) message.ttl_seconds = ttlSeconds;
    return this.send(message);
  }

  /** An `offer`, `answer` or `candidate` for `peerId`. */
  signal(kind, peerId, fields) { return this.send({ type: kind, target: peerId, ...fields }); }

  /** The other peers of the room that match `filters` (role, tags, properties). */
  async discover(filters = {}) {
    const answer = await this.send({ type: "discover_peers", filters });
    return Array.from(answer.peers || []);
  }

  /** Book `peerId` (a worker registered with `max_claims`) for `ttlSeconds` (the relay's
   * default is 300, its bounds 5 to 3600): resolves with a Lease that is yours to renew and
   * release; AlreadyClaimed when every slot of the worker is taken, PeerError when it is
   * not in the room. */
  async claim(peerId, { ttlSeconds } = {}) {
    const message = { type: "claim", peer_id: peerId };
    if (ttlSeconds !== undefined) message.ttl_seconds = ttlSeconds;
    return this.send(message);
  }

  /** Claim `peerId`, run `use(lease)` while the lease is kept renewed, release it after
   * (also when `use` throws); resolves with what `use` returned. */
  async withClaim(peerId, use, options = {}) {
    const lease = await this.claim(peerId, options);
    lease.keepRenewed();
    try {
      return await use(lease);
    } finally {
      await lease.release().catch(() => {});
    }
  }

  /** The live leases this session holds. */
  get leases() { return Array.from(this._leases.values()); }

  /** Replace this peer's metadata; the room sees `metadata_updated`. */
  async updateMetadata(metadata) {
    this.metadata = { ...metadata };
    await this.send({ type: "update_metadata", metadata: this.metadata });
  }

  /** The next application message (peer_message, broadcast, peer_joined, peer_left,
   * metadata_updated, expired, and the booking events booked, lease_ended and
   * peer_availability: the session has already marked its own leases ended); rejects with
   * SessionLost once the session has ended. */
  recv() { return this._inbox.get(); }

  /** The next relayed `offer`, `answer` or `candidate`. */
  nextSignal() { return this._signals.get(); }

  /** Leave the room and stop reconnecting. */
  close() {
    this._closing = true;
    if (this._ws) this._ws.close(1000);
    this._end(new SessionLost("CLOSED", "the session is closed"));
  }

  _attach(ws, registered) {
    this._ws = ws;
    this.resumeToken = registered.resume_token || null;
    this.peers = new Map((registered.peers || []).map((p) => [p.peer_id, p]));
    this.iceServers = Array.from(registered.ice_servers || []);
    ws.onmessage = (event) => this._dispatch(JSON.parse(event.data));
    ws.onclose = (event) => this._closed(event);
  }

  async _register(resume) {
    for (let i = 0; i <= MAX_REDIRECTS; i++) {
      let ws, reply;
      try {
        [ws, reply] = await this._registerAt(this.url, resume);
      } catch (exc) {
        if (exc instanceof SignalingError || this.url === this.entryUrl) throw exc;
        this.url = this.entryUrl; // the node it was sent to is gone
        continue;
      }
      if (reply.type === "registered_auth") return [ws, reply];
      const target = String(reply.ws_url);
      if (this.url.startsWith("wss:") && !target.startsWith("wss:")) {
        throw new Unavailable("INSECURE_REDIRECT", `refused a redirect from a wss URL to ${target}`);
      }
      this.url = target;
    }
    throw new Unavailable("TOO_MANY_REDIRECTS", `more than ${MAX_REDIRECTS} redirects registering in the room`);
  }

  _registerAt(url, resume) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const early = []; // frames of an old session may come before the answer: kept for _dispatch
      const fail = (error) => { clearTimeout(timer); ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null; ws.close(); reject(error); };
      const timer = setTimeout(() => fail(new ConnectionError(`no answer from ${url} in ${this.openTimeoutMs} ms`)), this.openTimeoutMs);
      ws.onerror = () => {};
      ws.onclose = (event) => fail(new ConnectionError(`the relay at ${url} closed the connection (${event.code}${event.reason ? " " + event.reason : ""})`));
      ws.onopen = () => {
        const message = {
          type: "register", protocol: 2, id: `${this._prefix}-register-${++this._ids}`,
          peer_id: this.peerId, room_id: this.room.roomId, token: this.room.token,
          id_token: this.identity.idToken, role: this.role, metadata: this.metadata,
        };
        if (this.maxClaims !== null) message.max_claims = this.maxClaims;
        if (resume && this.resumeToken) Object.assign(message, { resume_token: this.resumeToken, last_seq: this.lastSeq });
        ws.send(JSON.stringify(message));
      };
      ws.onmessage = (event) => {
        const reply = JSON.parse(event.data);
        if (reply.type === "registered_auth") {
          clearTimeout(timer);
          if (!resume) this.lastSeq = 0;
          ws.onmessage = ws.onclose = null;
          resolve([ws, reply]);
          for (const frame of early) this._dispatch(frame);
        } else if (reply.type === "redirect" && typeof reply.ws_url === "string") {
          clearTimeout(timer);
          ws.onclose = null;
          ws.close();
          resolve([ws, reply]);
        } else if (reply.type === "error" && !("seq" in reply)) {
          fail(errorFromFrame(reply));
        } else {
          early.push(reply);
        }
      };
    });
  }

  async _closed(event) {
    this._ws = null;
    if (this._closing) return;
    if (TERMINAL_CLOSE(event.code)) {
      this._end(new SessionLost(`CLOSED_${event.code}`, event.reason || ""));
      return;
    }
    try {
      await this._reconnect();
    } catch (exc) {
      this._end(exc instanceof SignalingError ? exc : new SessionLost("RECONNECT_FAILED", String(exc)));
    }
  }

  async _reconnect() {
    let hintMs = this._reconnectAfterMs;
    this._reconnectAfterMs = null;
    for (let attempt = 0; attempt < this.backoff.attempts; attempt++) {
      const cap = Math.min(this.backoff.maximumMs, this.backoff.initialMs * 2 ** attempt);
      await sleep(hintMs !== null ? hintMs : Math.random() * cap);
      hintMs = null;
      if (this._closing) return;
      let ws, registered;
      try {
        [ws, registered] = await this._register(true);
      } catch (exc) {
        if (exc instanceof ConnectionError) continue; // the relay is not back yet
        if (exc instanceof SignalingError && RETRYABLE.has(exc.code)) {
          if (exc.retryAfter) hintMs = exc.retryAfter * 1000 * (1 + Math.random() * 0.2);
          continue;
        }
        throw exc; // RESUME_FAILED and the like: the session is over
      }
      this.resumes += 1;
      this._attach(ws, registered);
      // The replay (frames up to registered.last_seq) arrives through _dispatch, in order,
      // before anything sent now is answered; what is still pending goes again with its id.
      for (const pending of this._pending.values()) ws.send(JSON.stringify(pending.message));
      this.dispatchEvent(new Event("resumed"));
      return;
    }
    throw new SessionLost("RECONNECT_FAILED", `no relay answered after ${this.backoff.attempts} attempts`);
  }

  _dispatch(message) {
    const seq = message.seq;
    delete message.seq;
    if (seq !== undefined && seq !== null) {
      if (seq <= this.lastSeq) return; // seen before the drop
      this.lastSeq = seq;
    }
    if ("message_id" in message && this._seenBefore(message)) return;
    const kind = message.type;
    const id = message.id;
    const answer = ["ack", "error", "peer_list", "pong", "claimed", "released"].includes(kind) && typeof id === "string";
    const pending = answer ? this._pending.get(id) : undefined;
    if (pending) this._pending.delete(id);
    if (kind === "ack" && pending) pending.resolve({ type: "ack", id, queued: Boolean(message.queued) });
    else if (kind === "error" && pending) pending.reject(errorFromFrame(message));
    else if ((kind === "peer_list" || kind === "pong") && pending) pending.resolve(message);
    // Here, not in claim(): a lease_ended read right after the answer must find the lease.
    else if (kind === "claimed" && pending) pending.resolve(this._hold(message, pending.message));
    else if (kind === "released" && pending) {
      const lease = this._leases.get(String(message.lease_id));
      if (lease) lease._end("released");
      pending.resolve(message);
    } else if (kind === "go_away") this._reconnectAfterMs = Number(message.reconnect_after_ms || 0);
    else if (kind === "ice_servers") {
      this.iceServers = Array.from(message.ice_servers || []);
      this.dispatchEvent(new Event("iceservers"));
    } else if (kind === "offer" || kind === "answer" || kind === "candidate") this._signals.put(message);
    else {
      if (kind === "peer_joined" || kind === "metadata_updated") {
        const { type, ...peer } = message;
        this.peers.set(message.peer_id, peer);
      } else if (kind === "peer_availability" && this.peers.has(message.peer_id)) {
        const known = this.peers.get(message.peer_id);
        for (const key of ["available", "claims", "max_claims"]) if (key in message) known[key] = message[key];
      } else if (kind === "peer_left") this.peers.delete(message.peer_id);
      else if (kind === "lease_ended") {
        const lease = this._leases.get(String(message.lease_id));
        if (lease) lease._end(String(message.reason || "expired"));
      }
      this._inbox.put(message);
    }
  }

  /** The lease a `claimed` frame grants (a claim), now held, or the one it extends (a
   * renewal: the frame itself if that lease has ended here meanwhile). */
  _hold(claimed, request) {
    const leaseId = String(claimed.lease_id);
    const expiresAt = Number(claimed.expires_at);
    const known = this._leases.get(leaseId);
    if (known) { known.expiresAt = expiresAt; return known; }
    if (request.type === "renew") return claimed;
    const lease = new Lease(this, String(claimed.peer_id), leaseId, expiresAt, request.ttl_seconds);
    this._leases.set(leaseId, lease);
    return lease;
  }

  _seenBefore(message) {
    const stamped = ["offer", "answer", "candidate", "error"].includes(message.type) ? "sender" : "from_peer_id";
    const key = JSON.stringify([message.type, message[stamped], message.message_id]);
    if (this._seen.has(key)) return true;
    this._seen.add(key);
    if (this._seen.size > SEEN_MESSAGES) this._seen.delete(this._seen.values().next().value);
    return false;
  }

  _end(error) {
    this._closing = true;
    for (const pending of this._pending.values()) pending.reject(error);
    this._pending.clear();
    this._inbox.fail(error);
    this._signals.fail(error);
    for (const lease of Array.from(this._leases.values())) lease._end("left"); // the relay ends them
    this.dispatchEvent(new CustomEvent("ended", { detail: error }));
  }
}

/** A socket that failed or closed before registering (retried by a resume). */
class ConnectionError extends Error {}

// WebRTC ---------------------------------------------------------------------------------

/** RTCPeerConnection's configuration for the service's `ice_servers` entries. */
export function rtcConfiguration(iceServers, { relayOnly = false } = {}) {
  return {
    iceServers: iceServers.map((s) => ({ urls: s.urls, username: s.username, credential: s.credential })),
    iceTransportPolicy: relayOnly ? "relay" : "all",
  };
}

/** An open data channel to `peerId`: `channel`, `pc`, and `recv()` for the next message.
 * On the offering side (`connect`), `path` is the selected candidate pair (`local_candidate`,
 * `remote_candidate`, `transport`), `timeToConnectMs` the time from offer to open, and
 * `describe()` says both in words. */
export class PeerLink {
  constructor(peerId, pc, channel, messages, { session = null, path = {}, timeToConnectMs = null } = {}) {
    this.peerId = peerId;
    this.pc = pc;
    this.channel = channel;
    this.messages = messages;
    this.session = session; // told of the connection's end (connection_report)
    this.path = path;
    this.timeToConnectMs = timeToConnectMs;
    channel.binaryType = "arraybuffer";
    const closed = () => this.messages.fail(new ChannelClosed("CHANNEL_CLOSED", `the data channel to ${peerId} closed`));
    channel.addEventListener("close", closed);
    pc.addEventListener("connectionstatechange", () => { if (["failed", "closed"].includes(pc.connectionState)) closed(); });
  }

  /** The next message on the channel (string or ArrayBuffer); ChannelClosed once closed. */
  recv() { return this.messages.get(); }

  /** Send, waiting while more than `highWater` bytes are buffered (backpressure). */
  async send(data, { highWater = 1024 * 1024 } = {}) {
    while (this.channel.bufferedAmount > highWater) {
      if (this.channel.readyState !== "open") throw new ChannelClosed("CHANNEL_CLOSED", `the data channel to ${this.peerId} closed`);
      this.channel.bufferedAmountLowThreshold = highWater / 4;
      await new Promise((resolve) => {
        const done = () => { this.channel.removeEventListener("bufferedamountlow", done); this.channel.removeEventListener("close", done); resolve(); };
        this.channel.addEventListener("bufferedamountlow", done);
        this.channel.addEventListener("close", done);
      });
    }
    if (this.channel.readyState !== "open") throw new ChannelClosed("CHANNEL_CLOSED", `the data channel to ${this.peerId} closed`);
    this.channel.send(data);
  }

  /** "direct (host -> host, udp) in 84 ms": how the connection was made, for people. */
  describe() {
    const { local_candidate: local, remote_candidate: remote, transport } = this.path;
    const kind = pathOf(local, remote);
    const pair = local && remote ? ` (${local} -> ${remote}${transport ? `, ${transport}` : ""})` : "";
    const took = this.timeToConnectMs !== null ? ` in ${this.timeToConnectMs} ms` : "";
    return `${kind}${pair}${took}`;
  }

  /** Close the peer connection (and report it closed); the returned promise never rejects. */
  close() {
    this.pc.close();
    if (!this.session) return Promise.resolve();
    const session = this.session;
    this.session = null;
    return report(session, this.peerId, "closed", this.path);
  }
}

const CANDIDATE_TYPES = new Set(["host", "srflx", "prflx", "relay"]);

/** The relay's name for a pair's path (as in signaling_peer_connections_total's `path`). */
function pathOf(local, remote) {
  if (!local || !remote) return "unknown";
  if (local === "relay" || remote === "relay") return "relay";
  if (local === "host" && remote === "host") return "direct";
  return "stun";
}

/** The types (and transport, and the TURN server when relayed) of the candidate pair ICE
 * selected, read from getStats(); empty when the browser does not say. The transport of a
 * relayed candidate is how this browser reached the TURN server (`relayProtocol`). */
export async function selectedPair(pc, iceServers = []) {
  let stats;
  try {
    stats = await pc.getStats();
  } catch {
    return {};
  }
  let pair = null;
  for (const entry of stats.values()) {
    if (entry.type === "transport" && entry.selectedCandidatePairId) pair = stats.get(entry.selectedCandidatePairId) || null;
  }
  if (!pair) {
    for (const entry of stats.values()) {
      if (entry.type === "candidate-pair" && entry.nominated && entry.state === "succeeded") { pair = entry; break; }
    }
  }
  if (!pair) return {};
  const local = stats.get(pair.localCandidateId) || {};
  const remote = stats.get(pair.remoteCandidateId) || {};
  const fields = {};
  if (CANDIDATE_TYPES.has(local.candidateType)) fields.local_candidate = local.candidateType;
  if (CANDIDATE_TYPES.has(remote.candidateType)) fields.remote_candidate = remote.candidateType;
  const transport = String((local.candidateType === "relay" && local.relayProtocol) || local.protocol || "").toLowerCase();
  if (["udp", "tcp", "tls"].includes(transport)) fields.transport = transport;
  const turnUrls = iceServers.flatMap((server) => [].concat(server.urls || []));
  if (local.candidateType === "relay" && turnUrls.includes(local.url)) fields.turn_server = local.url;
  return fields;
}

/** Tell the relay how the connection to `peerId` came out (`connection_report`); never
 * rejects: telemetry must not fail a transfer. */
async function report(session, peerId, outcome, fields = {}) {
  try {
    await session.send({ type: "connection_report", peer_id: peerId, outcome, ...fields });
  } catch (exc) {
    console.info(`connection report not sent: ${exc.message}`);
  }
}

function collect(channel) {
  const messages = new Queue();
  channel.addEventListener("message", (event) => messages.put(event.data));
  return messages;
}

/** Resolves once the channel opens; NegotiationFailed if the connection fails first. */
function untilOpen(pc, channel, timeoutMs) {
  return new Promise((resolve, reject) => {
    if (channel.readyState === "open") return resolve();
    const timer = setTimeout(() => {
      const error = new NegotiationFailed("NEGOTIATION_FAILED", `no data channel after ${timeoutMs / 1000} s (ICE ${pc.iceConnectionState})`);
      error.failure = "timeout";
      reject(error);
    }, timeoutMs);
    channel.addEventListener("open", () => { clearTimeout(timer); resolve(); });
    pc.addEventListener("connectionstatechange", () => {
      if (["failed", "closed"].includes(pc.connectionState)) {
        clearTimeout(timer);
        const error = new NegotiationFailed("NEGOTIATION_FAILED", `connection ${pc.connectionState}`);
        // ICE that connected and a connection that failed after it: the DTLS handshake.
        error.failure = pc.iceConnectionState === "failed" || pc.iceConnectionState === "checking" ? "ice_failed" : "dtls_failed";
        reject(error);
      }
    });
  });
}

/** Send our candidates as they are gathered (trickle ICE), then the end marker (null). */
function trickle(session, peerId, pc) {
  const sent = [];
  pc.addEventListener("icecandidate", (event) => {
    const init = event.candidate ? event.candidate.toJSON() : null;
    if (init && !init.candidate) return; // Chromium's empty end-of-generation candidate
    sent.push(session.signal("candidate", peerId, { candidate: init }).catch(() => {}));
  });
  return sent;
}

/** Add the peer's candidates from `session` until its end marker. */
async function takeCandidates(session, peerId, pc) {
  for (;;) {
    const message = await nextFrom(session, peerId, "candidate");
    if (message.candidate === null) return;
    if (message.candidate && message.candidate.candidate) await pc.addIceCandidate(message.candidate);
  }
}

async function nextFrom(session, peerId, kind) {
  const message = await session.nextSignal();
  if (message.type !== kind || message.sender !== peerId) {
    throw new NegotiationFailed("NEGOTIATION_FAILED", `expected ${kind} from ${peerId}, got ${message.type} from ${message.sender}`);
  }
  return message;
}

/** Offer a data channel to `peerId` over `session`; resolves with a PeerLink once it is open.
 * The relay hears how the connection came out (`connection_report`: connected with the
 * selected candidate pair's types and the time it took, or failed and why; closed, from
 * `PeerLink.close`). */
export async function connect(session, peerId, { label = "data", iceServers = null, relayOnly = false, timeoutMs = 30000 } = {}) {
  const started = performance.now();
  const servers = iceServers || session.iceServers;
  const pc = new RTCPeerConnection(rtcConfiguration(servers, { relayOnly }));
  try {
    const channel = pc.createDataChannel(label);
    channel.binaryType = "arraybuffer";
    const messages = collect(channel);
    const opened = untilOpen(pc, channel, timeoutMs);
    opened.catch(() => {});
    // The description goes first (without candidates: none is gathered before
    // setLocalDescription resolves), then each candidate as it comes.
    const queued = [];
    let described = false;
    pc.addEventListener("icecandidate", (event) => {
      const init = event.candidate ? event.candidate.toJSON() : null;
      if (init && !init.candidate) return;
      const send = () => session.signal("candidate", peerId, { candidate: init }).catch(() => {});
      if (described) send(); else queued.push(send);
    });
    await pc.setLocalDescription(await pc.createOffer());
    await session.signal("offer", peerId, { sdp: stripCandidates(pc.localDescription.sdp) });
    described = true;
    for (const send of queued.splice(0)) send();
    const answer = await nextFrom(session, peerId, "answer");
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    await Promise.race([takeCandidates(session, peerId, pc), opened]);
    await opened;
    const path = await selectedPair(pc, servers);
    const timeToConnectMs = Math.min(600000, Math.round(performance.now() - started));
    await report(session, peerId, "connected", { ...path, time_to_connect_ms: timeToConnectMs });
    return new PeerLink(peerId, pc, channel, messages, { session, path, timeToConnectMs });
  } catch (exc) {
    if (exc instanceof NegotiationFailed) {
      const path = await selectedPair(pc, servers);
      pc.close();
      await report(session, peerId, "failed", { ...path, failure: exc.failure || "other" });
    } else pc.close();
    throw exc;
  }
}

/** Answer the next offer over `session`; resolves with a PeerLink once its channel is open. */
export async function accept(session, { iceServers = null, relayOnly = false, timeoutMs = 30000 } = {}) {
  let offer = await session.nextSignal();
  while (offer.type !== "offer") offer = await session.nextSignal();
  const peerId = String(offer.sender);
  const pc = new RTCPeerConnection(rtcConfiguration(iceServers || session.iceServers, { relayOnly }));
  try {
    const arrived = new Promise((resolve) => pc.addEventListener("datachannel", (event) => {
      const messages = collect(event.channel);
      resolve([event.channel, messages]);
    }));
    await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await session.signal("answer", peerId, { sdp: stripCandidates(pc.localDescription.sdp) });
    trickle(session, peerId, pc);
    const taking = takeCandidates(session, peerId, pc);
    taking.catch(() => {});
    const [channel, messages] = await arrived;
    await untilOpen(pc, channel, timeoutMs);
    return new PeerLink(peerId, pc, channel, messages);
  } catch (exc) {
    pc.close();
    throw exc;
  }
}

function stripCandidates(sdp) {
  return sdp.split(/\r\n/).filter((line) => !line.startsWith("a=candidate:") && !line.startsWith("a=end-of-candidates")).join("\r\n");
}
