// The performer's keys and the blend: pure functions, so a test can call them as the page does.

export const CUE_KEYS = 9;              // keys 1-9 fire (shift: arm) cues 1-9
export const BLEND_INTERVAL_MS = 250;   // a moving blend slider sends at most this often

const TEXT_INPUTS = new Set(["", "text", "search", "number", "email", "url", "password", "tel", "date", "time",
                             "datetime-local", "month", "week"]);

/** Whether keys pressed with focus on `el` are typing (so they must not fire anything). */
export function isTyping(el) {
  if (!el || el.nodeType !== 1) return false;
  if (el.isContentEditable) return true;
  const tag = el.tagName;
  if (tag === "TEXTAREA") return true;
  if (tag === "INPUT") return TEXT_INPUTS.has((el.getAttribute("type") ?? "").toLowerCase());
  return false;
}

/**
 * A keydown -> what it asks for: {action: "fire" | "arm", cue} for 1-9 (shift: arm), {action: "tap"}
 * for T, or null (typing in a text field, a modifier held, a held key repeating, any other key).
 */
export function keyAction(ev) {
  if (ev.repeat || ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing) return null;
  if (isTyping(ev.target)) return null;
  // the code, not the key: shift+1 is "!" (or another sign, by layout), its code is still Digit1
  const m = /^(?:Digit|Numpad)([1-9])$/.exec(ev.code ?? "");
  if (m) return { action: ev.shiftKey ? "arm" : "fire", cue: Number(m[1]) };
  if (ev.code === "KeyT" && !ev.shiftKey) return { action: "tap" };
  return null;
}

/** A weight w in 0..1 between prompts A and B -> the blend's parts [{A, 1 - w}, {B, w}]. */
export function blendPrompts(a, b, w) {
  const weight = Math.min(1, Math.max(0, Number(w) || 0));
  const round = (x) => Math.round(x * 1000) / 1000;
  return [{ text: a, weight: round(1 - weight) }, { text: b, weight: round(weight) }];
}

/** "A 70% · B 30%" */
export function blendLabel(w) {
  const b = Math.round(Math.min(1, Math.max(0, Number(w) || 0)) * 100);
  return `A ${100 - b}% · B ${b}%`;
}

/**
 * `fn` at most once per `ms`: the first call runs at once, later ones within the interval
 * collapse into one call (with the latest arguments) at its end.
 */
export function throttle(fn, ms, now = () => performance.now()) {
  let last = -Infinity;
  let timer = null;
  let pending = null;
  const run = () => {
    timer = null;
    last = now();
    const args = pending;
    pending = null;
    fn(...args);
  };
  const call = (...args) => {
    pending = args;
    if (timer !== null) return;
    const wait = last + ms - now();
    if (wait <= 0) run();
    else timer = setTimeout(run, wait);
  };
  call.cancel = () => {
    clearTimeout(timer);
    timer = null;
    pending = null;
  };
  return call;
}

/** The lowest cue number from 1 up that `cues` (the state's list) leaves empty. */
export function firstFreeCue(cues, max = 99) {
  const used = new Set((cues ?? []).map((c) => c.cue));
  for (let n = 1; n <= max; n++) if (!used.has(n)) return n;
  return max;
}
