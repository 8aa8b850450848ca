// The caption over the video ("the prompt on screen", #now) follows the pixels, not the server.
//
// The server says a prompt is live well before its picture is: the state carries the new prompt
// at the block boundary where the switch happens (before that block is even generated), and
// `prompt_applied` comes when its first block is generated, `plays_in_ms` before it goes on air,
// which is itself before this page decodes and shows it. So the caption keeps the old prompt
// until this page has presented the switch's first frame: the `photon` answer to this page's
// `presented` reports (photon.js) names the first frame of the switch it showed. Where no answer
// can come (no requestVideoFrameCallback) the caption follows the server's estimate; where one
// should come but does not, a deadline (FALLBACK_MS) changes it anyway, so it never sticks.

export const FALLBACK_MS = 3000;         // the longest a switch's caption waits for the page's report
export const LATE_MS = 1000;             // ... and at least this long after the server's estimate
export const STATE_MARGIN_MS = 300;      // a prompt change the state alone tells (a rewind): after its estimate

const KEEP = 32;                         // records kept for tests and debugging

/**
 * `show(text)` puts the caption on the page. Each switch waits in `pending` (oldest first) until
 * its first frame is presented (`presented`), or its deadline.
 * `hooks` (window.__longlive in the page): `captions`, each change {text, at, why}; `switches`,
 * each `photon` answer {frame, shown, text, presentedAt, answeredAt} (performance.now() times).
 */
export class Caption {
  constructor(show, { clock = () => performance.now(), later = (fn, ms) => setTimeout(fn, ms),
                      cancel = (timer) => clearTimeout(timer) } = {}) {
    this.show = show;
    this.clock = clock;
    this.later = later;
    this.cancel = cancel;
    this.text = null;
    this.pending = [];                   // {text, frame (null: told by a state), timer}
    this.texts = new Map();              // frame -> text of recent switches (for the hooks)
    this.hooks = { captions: [], switches: [] };
  }

  /** The prompt on screen as the page (re)joins: shown at once; nothing waits any more. */
  now(text) {
    this.#drop(() => true);
    this.#put(text ?? "", "joined");
  }

  /**
   * A `prompt_applied`: show `text` once frame `frame` is presented. `watching`: whether this
   * page reports its frames (else the server's estimate, `plays_in_ms`, is all there is).
   */
  switched({ text, frame, plays_in_ms: playsIn = 0 }, watching = true) {
    // a prompt change a state told before it (this switch's own boundary) is this switch
    this.#drop((p) => p.frame === null);
    const wait = watching ? Math.max(FALLBACK_MS, playsIn + LATE_MS) : Math.max(0, playsIn);
    const entry = { text, frame, timer: null };
    entry.timer = this.later(() => this.#reach(entry, watching ? "deadline" : "estimate"), wait);
    this.pending.push(entry);
    this.texts.set(frame, text);
    while (this.texts.size > KEEP) this.texts.delete(this.texts.keys().next().value);
  }

  /**
   * A `photon` answer: this page presented frame `shown` (a switch's first frame, or the first of
   * it the page showed), at `at` (page clock; null: unknown, now). Every switch starting at or
   * before it is on screen.
   */
  presented({ frame, shown }, at = null) {
    const answeredAt = this.clock();
    this.#record(this.hooks.switches, { frame, shown, text: this.texts.get(frame) ?? null,
                                        presentedAt: at ?? answeredAt, answeredAt });
    let newest = -1;
    this.pending.forEach((p, i) => { if (p.frame !== null && p.frame <= shown) newest = i; });
    if (newest < 0) return;
    const entry = this.pending[newest];
    // the report may come a hair before its frame's display time: not before it
    const wait = at === null ? 0 : at - answeredAt;
    if (wait > 1) {
      this.cancel(entry.timer);
      entry.timer = this.later(() => this.#reach(entry, "presented"), wait);
    } else {
      this.#reach(entry, "presented");
    }
  }

  /**
   * A state says the stream runs under `text`. A switch announces itself (prompt_applied) soon
   * after; a rewind or a timeline's start does not: if nothing of the kind is waiting, `text`
   * shows after `ms`, the state's estimate of when its frames are on air.
   */
  stateSays(text, ms) {
    if (text == null || text === this.text || this.pending.some((p) => p.text === text)) return;
    const entry = { text, frame: null, timer: null };
    entry.timer = this.later(() => this.#reach(entry, "state"), Math.max(0, ms) + STATE_MARGIN_MS);
    this.pending.push(entry);
  }

  /** `entry` is on screen: it and every older switch are done. */
  #reach(entry, why) {
    const i = this.pending.indexOf(entry);
    if (i < 0) return;
    this.#drop((p, j) => j <= i);
    this.#put(entry.text, why);
  }

  /** Forget the waiting switches `which(entry, index)` picks. */
  #drop(which) {
    const gone = this.pending.filter(which);
    for (const p of gone) this.cancel(p.timer);
    this.pending = this.pending.filter((p) => !gone.includes(p));
  }

  #put(text, why) {
    const changed = text !== this.text;
    this.text = text;
    if (changed) {
      this.show(text);
      this.#record(this.hooks.captions, { text, at: this.clock(), why });
    }
  }

  #record(list, item) {
    list.push(item);
    if (list.length > KEEP) list.shift();
  }
}
