// The control protocol (docs/PROTOCOL.md) over a WebRTC data channel: msgpack maps both ways.
import { encode, decode } from "./vendor/msgpack/index.mjs";

export const PROTOCOL_VERSION = 1;

export class ControlChannel {
  /** @param {RTCDataChannel} channel an open or opening data channel labelled "control" */
  constructor(channel) {
    this.channel = channel;
    this.channel.binaryType = "arraybuffer";
    this.handlers = new Map();   // type -> Set(callback)
    // ids are unique to this page, so another page's ids (in prompt_applied.superseded) never match ours
    this.idPrefix = Math.random().toString(36).slice(2, 8);
    this.nextId = 1;
    this.channel.addEventListener("message", (ev) => this.#receive(ev.data));
  }

  get open() {
    return this.channel.readyState === "open";
  }

  /** Send a command; returns its request id (echoed in the server's ack / prompt_applied / error). */
  send(type, fields = {}) {
    if (this.channel.readyState !== "open") throw new Error("the control channel is not open");
    const id = `${this.idPrefix}-${this.nextId++}`;
    this.channel.send(encode({ type, id, ...fields }));
    return id;
  }

  /** Call `callback(message)` for every server message of `type` ("*" for all). */
  on(type, callback) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(callback);
    return () => this.handlers.get(type).delete(callback);
  }

  #receive(data) {
    let msg;
    try {
      msg = typeof data === "string" ? JSON.parse(data) : decode(new Uint8Array(data));
    } catch (err) {
      console.warn("undecodable control message", err);
      return;
    }
    if (!msg || typeof msg.type !== "string") return;
    for (const key of [msg.type, "*"]) {
      for (const cb of this.handlers.get(key) ?? []) {
        try { cb(msg); } catch (err) { console.error(err); }
      }
    }
  }
}
