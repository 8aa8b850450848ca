// Web MIDI: a learnable map from MIDI controls (notes, CCs) to what the performer steers.
//
// The mapping logic is pure (MidiMap: learn(), handle(bytes) -> action, toJSON / fromJSON),
// so it runs the same in a test as in the page; openMidi() is the only part that touches
// navigator.requestMIDIAccess.
//
// Targets:   {action: "fire", cue}  {action: "arm", cue}  {action: "transition_blocks"}  {action: "blend_weight"}
// Controls:  {type: "note" | "cc", channel: 0-15, number: 0-127}
// Actions handle() returns:
//   {type: "learned", mapping}                  (in learn mode: the control is now bound to the target)
//   {type: "fire", cue} / {type: "arm", cue}    (a note on, or a CC above 0)
//   {type: "transition_blocks", blocks}         (0..127 -> 0..MAX_BLOCKS)
//   {type: "blend_weight", weight}              (0..127 -> 0..1)

export const FORMAT = "longlive-midi-map";
export const VERSION = 1;
export const STORAGE_KEY = "longlive.midi-map";
export const MAX_BLOCKS = 16;          // a CC's full travel spans 0..16 blocks of glide
export const MAX_CUE = 99;
export const MAX_MAPPINGS = 512;
export const MAX_FILE_BYTES = 256 * 1024;

const ACTIONS = ["fire", "arm", "transition_blocks", "blend_weight"];
const TYPES = ["note", "cc"];

export class MidiMapError extends Error {}

const isInt = (v, lo, hi) => Number.isInteger(v) && v >= lo && v <= hi;

/** MIDI bytes -> {type: "note" | "note_off" | "cc", channel, number, value}, or null for anything else. */
export function parseMessage(data) {
  if (!data || data.length < 3) return null;
  const status = data[0] & 0xf0;
  const channel = data[0] & 0x0f;
  const number = data[1] & 0x7f;
  const value = data[2] & 0x7f;
  if (status === 0x90 && value > 0) return { type: "note", channel, number, value };
  if (status === 0x90 || status === 0x80) return { type: "note_off", channel, number, value: 0 };
  if (status === 0xb0) return { type: "cc", channel, number, value };
  return null;
}

export const controlKey = (c) => `${c.type}:${c.channel}:${c.number}`;

export function targetKey(t) {
  return t.action === "fire" || t.action === "arm" ? `${t.action}:${t.cue}` : t.action;
}

/** "fire:2" -> {action: "fire", cue: 2}; "blend_weight" -> {action: "blend_weight"}; throws MidiMapError. */
export function parseTarget(key) {
  const [action, cue] = String(key).split(":");
  return checkTarget(cue === undefined ? { action } : { action, cue: Number(cue) }, "the target");
}

export function describeTarget(t) {
  if (t.action === "fire") return `fire cue ${t.cue}`;
  if (t.action === "arm") return `arm cue ${t.cue}`;
  return t.action === "transition_blocks" ? "transition blocks" : "blend weight";
}

export function describeControl(c) {
  return `${c.type === "note" ? "note" : "CC"} ${c.number} (channel ${c.channel + 1})`;
}

function kind(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

function checkTarget(t, where) {
  if (t === null || typeof t !== "object" || Array.isArray(t)) throw new MidiMapError(`${where} must be an object, not ${kind(t)}`);
  if (!ACTIONS.includes(t.action)) {
    throw new MidiMapError(`${where} has the action ${JSON.stringify(t.action)}; it must be one of ${ACTIONS.join(", ")}`);
  }
  if (t.action === "fire" || t.action === "arm") {
    if (!isInt(t.cue, 1, MAX_CUE)) throw new MidiMapError(`${where} needs a cue number from 1 to ${MAX_CUE}`);
    return { action: t.action, cue: t.cue };
  }
  return { action: t.action };
}

function checkControl(c, where) {
  if (c === null || typeof c !== "object" || Array.isArray(c)) throw new MidiMapError(`${where} must be an object, not ${kind(c)}`);
  if (!TYPES.includes(c.type)) throw new MidiMapError(`${where} has the type ${JSON.stringify(c.type)}; it must be note or cc`);
  if (!isInt(c.channel, 0, 15)) throw new MidiMapError(`${where} needs a channel from 0 to 15`);
  if (!isInt(c.number, 0, 127)) throw new MidiMapError(`${where} needs a number from 0 to 127`);
  return { type: c.type, channel: c.channel, number: c.number };
}

export class MidiMap {
  /** @param {Array<{control, target}>} mappings (checked) */
  constructor(mappings = []) {
    this._list = [];
    this.learning = null;      // the target the next moved control is bound to
    for (const m of mappings) this.bind(m.control, m.target);
  }

  get mappings() {
    return this._list.map((m) => ({ control: { ...m.control }, target: { ...m.target } }));
  }

  get size() {
    return this._list.length;
  }

  /** Bind `control` to `target`: each control drives one target, each target one control. */
  bind(control, target) {
    const c = checkControl(control, "the control"), t = checkTarget(target, "the target");
    this._list = this._list.filter((m) => controlKey(m.control) !== controlKey(c) && targetKey(m.target) !== targetKey(t));
    if (this._list.length >= MAX_MAPPINGS) throw new MidiMapError(`a map holds at most ${MAX_MAPPINGS} mappings`);
    this._list.push({ control: c, target: t });
    return { control: { ...c }, target: { ...t } };
  }

  /** Learn mode: the next note on or CC is bound to `target` (a target object or key like "fire:2"). */
  learn(target) {
    this.learning = typeof target === "string" ? parseTarget(target) : checkTarget(target, "the target");
    return this.learning;
  }

  cancel() {
    this.learning = null;
  }

  /** Remove the mapping of a target (key or object); true when there was one. */
  remove(target) {
    const key = typeof target === "string" ? target : targetKey(target);
    const before = this._list.length;
    this._list = this._list.filter((m) => targetKey(m.target) !== key);
    return this._list.length !== before;
  }

  clear() {
    this._list = [];
    this.learning = null;
  }

  /** The control bound to a target, or null. */
  controlFor(target) {
    const key = typeof target === "string" ? target : targetKey(target);
    return this._list.find((m) => targetKey(m.target) === key)?.control ?? null;
  }

  /** One MIDI message (bytes, or parseMessage's result) -> the action it asks for, or null. */
  handle(message) {
    const msg = message && typeof message.type === "string" ? message : parseMessage(message);
    if (!msg || msg.type === "note_off") return null;
    if (this.learning) {
      const mapping = this.bind({ type: msg.type, channel: msg.channel, number: msg.number }, this.learning);
      this.learning = null;
      return { type: "learned", mapping };
    }
    const m = this._list.find((x) => controlKey(x.control) === controlKey(msg));
    if (!m) return null;
    const t = m.target;
    if (t.action === "fire" || t.action === "arm") {
      return msg.value > 0 ? { type: t.action, cue: t.cue } : null;    // a CC button's release sends 0
    }
    if (t.action === "transition_blocks") return { type: "transition_blocks", blocks: Math.round((msg.value * MAX_BLOCKS) / 127) };
    return { type: "blend_weight", weight: msg.value / 127 };
  }

  toJSON() {
    return { format: FORMAT, version: VERSION, mappings: this.mappings };
  }

  /** A map from its JSON object; throws MidiMapError (one sentence, no trailing period) when it is not one. */
  static fromJSON(obj) {
    if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
      throw new MidiMapError(`it holds ${kind(obj)}, not a MIDI map object`);
    }
    if (obj.format !== FORMAT) throw new MidiMapError(`it is not a LongLive MIDI map (format is not "${FORMAT}")`);
    if (obj.version !== VERSION) throw new MidiMapError(`it is version ${JSON.stringify(obj.version)}; this page reads version ${VERSION}`);
    if (!Array.isArray(obj.mappings)) throw new MidiMapError("it has no list of mappings");
    if (obj.mappings.length > MAX_MAPPINGS) throw new MidiMapError(`it has ${obj.mappings.length} mappings; the limit is ${MAX_MAPPINGS}`);
    const seen = new Set();
    const list = obj.mappings.map((m, i) => {
      const where = `mappings[${i}]`;
      if (m === null || typeof m !== "object" || Array.isArray(m)) throw new MidiMapError(`${where} must be an object, not ${kind(m)}`);
      const control = checkControl(m.control, `${where}.control`);
      const target = checkTarget(m.target, `${where}.target`);
      for (const key of [`c ${controlKey(control)}`, `t ${targetKey(target)}`]) {
        if (seen.has(key)) throw new MidiMapError(`${where} repeats the control or the target of an earlier mapping`);
        seen.add(key);
      }
      return { control, target };
    });
    return new MidiMap(list);
  }

  /** A map from JSON text; throws MidiMapError. */
  static parse(text) {
    let obj;
    try {
      obj = JSON.parse(text);
    } catch {
      throw new MidiMapError("it is not valid JSON");
    }
    return MidiMap.fromJSON(obj);
  }

  save(storage = globalThis.localStorage) {
    try {
      storage?.setItem(STORAGE_KEY, JSON.stringify(this.toJSON()));
      return true;
    } catch {
      return false;      // storage full or off: the map lives until the page closes
    }
  }

  /** The saved map ({map, error}): an empty one when none is saved or it cannot be read. */
  static load(storage = globalThis.localStorage) {
    let text = null;
    try {
      text = storage?.getItem(STORAGE_KEY) ?? null;
    } catch {
      return { map: new MidiMap(), error: "the browser's storage is not available, so MIDI mappings last until the page closes" };
    }
    if (text === null) return { map: new MidiMap(), error: null };
    try {
      return { map: MidiMap.parse(text), error: null };
    } catch (err) {
      return { map: new MidiMap(), error: `the saved MIDI mappings could not be read (${err.message}), so none are loaded` };
    }
  }
}

// -- Web MIDI ----------------------------------------------------------------------------------------
/**
 * Listen to every MIDI input (and inputs plugged in later): `onMessage(bytes, input)` for each
 * message, `onStatus(line)` with one line on what MIDI this page has. Resolves to the access,
 * or null when there is no Web MIDI or permission was refused (the line says which).
 */
export async function openMidi(onMessage, onStatus, nav = globalThis.navigator) {
  if (!nav || typeof nav.requestMIDIAccess !== "function") {
    onStatus("MIDI: this browser has no Web MIDI, so MIDI controllers cannot be used here (Chrome or Edge can).", "off");
    return null;
  }
  onStatus("MIDI: asking the browser for access…", "waiting");
  let access;
  try {
    access = await nav.requestMIDIAccess({ sysex: false });
  } catch (err) {
    const denied = err?.name === "NotAllowedError" || err?.name === "SecurityError";
    onStatus(denied ? "MIDI: permission was denied, so MIDI controllers cannot be used (allow MIDI for this site, then reload)."
      : `MIDI: not available (${err?.message ?? err}).`, "off");
    return null;
  }
  const attached = new WeakSet();
  const refresh = () => {
    const names = [];
    for (const input of access.inputs.values()) {
      if (!attached.has(input)) {
        attached.add(input);
        input.addEventListener("midimessage", (ev) => onMessage(ev.data, input));
      }
      if (input.state !== "disconnected") names.push(input.name || "unnamed input");
    }
    onStatus(names.length ? `MIDI: ${names.length} input${names.length > 1 ? "s" : ""} (${names.join(", ")})`
      : "MIDI: ready, no input connected", names.length ? "on" : "ready");
  };
  access.addEventListener?.("statechange", refresh);
  refresh();
  return access;
}
