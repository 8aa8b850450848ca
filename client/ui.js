// Everything the page shows; app.js decides when.

const $ = (id) => document.getElementById(id);

export const els = {
  video: $("video"), overlay: $("overlay"), now: $("now"), status: $("status"), notice: $("notice"),
  form: $("prompt-form"), prompt: $("prompt"), send: $("send"), hint: $("prompt-hint"),
  pause: $("pause"), seedForm: $("seed-form"), seed: $("seed"), seedRandom: $("seed-random"),
  error: $("error"), applied: $("applied"),
  generated: $("stat-generated"), delivered: $("stat-delivered"), rates: $("stat-rates"), stall: $("stat-stall"),
  latency: $("stat-latency"), block: $("stat-block"), viewers: $("stat-viewers"),
  record: $("record"), recIndicator: $("rec-indicator"), recTime: $("rec-time"),
  recordingLinks: $("recording-links"), recordingLink: $("recording-link"), recordingTimeline: $("recording-timeline"),
  recordingLength: $("recording-length"),
  timelineFile: $("timeline-file"), timelineStop: $("timeline-stop"), timelineState: $("timeline-state"),
  info: $("info"), segments: $("segments"),
  enhance: $("enhance"), enhanceNote: $("enhance-note"), review: $("review"), reviewInput: $("review-input"),
  reviewText: $("review-text"),
  reviewMeta: $("review-meta"), reviewAccept: $("review-accept"), reviewRegen: $("review-regen"),
  reviewEdit: $("review-edit"), reviewCancel: $("review-cancel"),
  // the performer deck: cues, tempo, transition, blend, MIDI; and the lead in the header
  buffered: $("stat-buffered"), lead: $("stat-lead"), leadBox: $("stat-lead-box"),
  cues: $("cues"), quantize: $("cue-quantize"), cueStoreForm: $("cue-store-form"), cueNumber: $("cue-number"),
  cueName: $("cue-name"), cueStore: $("cue-store"), lastFire: $("last-fire"),
  bpm: $("bpm"), beatsPerBar: $("beats-per-bar"), tap: $("tap"), beat: $("beat"), beatCount: $("beat-count"),
  tempoSource: $("tempo-source"), tempoNotice: $("tempo-notice"),
  transitionBlocks: $("transition-blocks"), transitionMethod: $("transition-method"),
  transitionState: $("transition-state"), transitionText: $("transition-text"), transitionProgress: $("transition-progress"),
  blendA: $("blend-a"), blendB: $("blend-b"), blendWeight: $("blend-weight"), blendValue: $("blend-value"),
  blendHint: $("blend-hint"),
  midiStatus: $("midi-status"), midiLearn: $("midi-learn"), midiExport: $("midi-export"), midiImport: $("midi-import"),
  midiMessage: $("midi-message"), midiMappings: $("midi-mappings"),
};

const HINT = "Enter ↵ to switch";
const STALL_RATIO = 0.8;        // a rate below 80% of what it should be is a stall
const STALL_WINDOW_S = 3;       // ... once the rates cover at least this long (blocks arrive 12 frames at a time)

const clock = (unixSeconds) =>
  new Date(unixSeconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const count = (n) => n.toLocaleString("en-US");
const rate = (fps) => (fps == null ? "–" : fps.toFixed(1));

export function setStatus(state, text = state) {
  els.status.dataset.state = state;
  els.status.textContent = text;
}

export function setOverlay(text) {
  els.overlay.hidden = !text;
  els.overlay.textContent = text ?? "";
}

export function showNotice(state) {
  if (state.embedded_default) {
    const what = state.about || "the embedded default";
    els.notice.textContent =
      `No weights loaded: this server runs ${what}. Prompts, switching and streaming behave as with the ` +
      "real model. Start it with --weights DIR (or LONGLIVE_WEIGHTS) for LongLive 1.3B.";
    els.notice.hidden = false;
  } else {
    els.notice.hidden = true;
  }
}

// -- the message line (#error): one message at a time, each with a life ------------------------------
// An error has a kind: what it is about, the command type it refuses ("prompt", "timeline", "seed",
// "rewind", "record", "cue", "tempo", "transition", "pause"), or "connection", "stream" (the
// generator's own failures), "protocol". It goes when a success of its kind comes (clearError: the
// next prompt queued clears a prompt's error, a timeline that plays a timeline's), when a newer
// message takes the line, or after ERROR_MS. A confirmation (showDone: "Rewound to segment 3.") says
// that something took effect, and goes after DONE_MS or with the next message.
export const ERROR_MS = 15000;
export const DONE_MS = 4000;
let messageTimer = null;

function putMessage(text, kind, tone, ms) {
  clearTimeout(messageTimer);
  els.error.textContent = text;
  els.error.dataset.kind = kind;
  els.error.dataset.tone = tone;
  els.error.hidden = false;
  messageTimer = setTimeout(hideMessage, ms);
}

function hideMessage() {
  clearTimeout(messageTimer);
  els.error.hidden = true;
  els.error.textContent = "";
  delete els.error.dataset.kind;
  delete els.error.dataset.tone;
}

/** An error about `kind` (null or "" hides the line). */
export function showError(message, kind = "general") {
  if (!message) hideMessage();
  else putMessage(message, kind, "error", ERROR_MS);
}

/** A confirmation: `kind` took effect. */
export function showDone(message, kind) {
  putMessage(message, kind, "done", DONE_MS);
}

/** Something of `kind` succeeded: an error about it is over. */
export function clearError(kind) {
  if (!els.error.hidden && els.error.dataset.tone === "error" && els.error.dataset.kind === kind) hideMessage();
}

/** The caption over the video: the prompt on screen (caption.js says when it changes). */
export function showCaption(text) {
  els.now.textContent = text ?? "";
  els.now.title = text ? `the prompt on screen: ${text}` : "the prompt on screen";
}

/** The state's pill and controls (the pill only while connected: app.js says when not). The
 * caption is not the state's prompt, which comes before its picture: see showCaption. */
export function showState(state, connected = true) {
  if (document.activeElement !== els.seed) els.seed.value = String(state.seed ?? 0);
  els.pause.textContent = state.paused ? "Resume" : "Pause";
  els.pause.setAttribute("aria-pressed", state.paused ? "true" : "false");
  if (state.lead_blocks != null) els.lead.textContent = `${state.lead_blocks} block${state.lead_blocks === 1 ? "" : "s"}`;
  if (!connected) return;
  if (state.failed || state.engine === "stopped") setStatus("failed", "generator stopped");
  else if (state.engine === "restarting") setStatus("restarting", "restarting after an error");
  else setStatus(state.paused ? "paused" : "live");
}

/**
 * Generated fps (frames the engine made per second) and delivered fps (new frames each viewer is
 * sent per second, repeats not counted), and a stall when either falls short: generation below
 * the stream's fps, or the slowest viewer below what was generated.
 */
export function showStats(stats, streamFps) {
  els.generated.textContent = rate(stats.generated_fps);
  els.delivered.textContent = rate(stats.delivered_fps);
  els.rates.title =
    `generated: frames made per second (the stream runs at ${streamFps ?? "?"} fps; generation speed ` +
    `${rate(stats.gen_fps)} fps of compute)\ndelivered: new frames sent per second to the median viewer ` +
    `(slowest: ${rate(stats.delivered_fps_min)}); a frozen picture counts 0 however often it is resent\n` +
    `played: ${rate(stats.fps)} fps; measured over ${(stats.rate_window_s ?? 0).toFixed(1)} s`;
  els.block.textContent = `${Math.round(stats.block_ms)} ms`;
  els.block.parentElement.title = `milliseconds to generate one block: ${Math.round(stats.dit_ms ?? 0)} ms DiT + ` +
    `${Math.round(stats.decode_ms ?? 0)} ms decode`;
  els.viewers.textContent = String(stats.viewers);
  if (stats.buffered != null) {
    els.buffered.textContent = String(stats.buffered);
    els.leadBox.dataset.low = !stats.paused && stats.buffered === 0 ? "true" : "false";
  }

  let stall = null;
  const measured = !stats.paused && stats.generated_fps != null && (stats.rate_window_s ?? 0) >= STALL_WINDOW_S;
  if (measured && streamFps && stats.generated_fps < STALL_RATIO * streamFps) {
    stall = `stall: generating ${rate(stats.generated_fps)} of ${streamFps} fps`;
  } else if (measured && stats.delivered_fps_min != null && stats.generated_fps > 0
             && stats.delivered_fps_min < STALL_RATIO * stats.generated_fps) {
    stall = `stall: a viewer gets ${rate(stats.delivered_fps_min)} of ${rate(stats.generated_fps)} fps`;
  }
  els.stall.hidden = !stall;
  els.stall.textContent = stall ?? "";
  els.rates.dataset.stall = stall ? "true" : "false";
}

/** Prompt-to-photon: the server's estimate when a switch is applied, then (`measured`) when this
 * page's report came back with the time its first frame was really on this screen. */
export function showLatency(ms, how = "estimated") {
  els.latency.textContent = ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
  els.latency.dataset.how = how;
  els.latency.title = how === "measured" ? "time from sending a prompt to its first frame on this screen"
                                         : "time from sending a prompt to its first frame on air (estimated)";
}

/** Under the prompt box: how long the text is against the server's limit, once that matters. */
export function showPromptLength(chars, limit) {
  const over = chars > limit;
  els.hint.dataset.over = over ? "true" : "false";
  els.prompt.setAttribute("aria-invalid", over ? "true" : "false");
  if (over) els.hint.textContent = `${count(chars)} / ${count(limit)} characters: too long to send`;
  else if (chars > 0.8 * limit) els.hint.textContent = `${count(chars)} / ${count(limit)} characters`;
  else els.hint.textContent = HINT;
}

// -- the list of prompts: the server's history, plus this page's prompts on their way -----------------
function entry(text, metaText, className = "") {
  const li = document.createElement("li");
  if (className) li.className = className;
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = metaText;
  li.append(span, meta);
  return li;
}

function appliedItem(p) {
  const extra = [];
  if (p.cue != null) extra.push(`cue ${p.cue}`);
  if (p.transition) extra.push(`${p.transition.method} glide over ${p.transition.blocks} blocks`);
  if (p.offset_ms != null) extra.push(`${Math.round(p.offset_ms)} ms after the beat`);
  const meta = `${clock(p.time)} · block ${p.block} · ${Math.round(p.latency_ms)} ms${extra.map((x) => ` · ${x}`).join("")}`;
  const li = entry(p.text, meta, "applied");
  li.dataset.block = String(p.block);
  if (p.id != null) li.dataset.id = String(p.id);
  return li;
}

/** This page's prompt with request id `id`, while it is on its way (or what became of it). */
function ownEntry(id) {
  if (id == null) return null;
  for (const li of els.applied.querySelectorAll("li[data-own]")) {
    if (li.dataset.id === String(id)) return li;
  }
  return null;
}

function settle(li, className, metaText) {
  li.classList.remove("pending");
  li.classList.add(className);
  li.querySelector(".meta").textContent = metaText;
}

function trim() {
  while (els.applied.children.length > 50) els.applied.lastElementChild.remove();
}

/** Replace the list with the server's history (oldest first in `prompts`). */
export function showHistory(prompts) {
  els.applied.replaceChildren(...prompts.slice().reverse().map(appliedItem));
}

/** A prompt was sent (request `id`): listed at once as on its way. */
export function showPending(id, text) {
  const li = entry(text, "sending…", "pending");
  li.dataset.id = String(id);
  li.dataset.own = "true";
  els.applied.prepend(li);
  trim();
}

/** The server queued it for the next block. */
export function markQueued(id) {
  const li = ownEntry(id);
  if (li?.classList.contains("pending")) li.querySelector(".meta").textContent = "queued for the next block…";
}

/** The server refused it: the entry says why. */
export function markRejected(id, message) {
  const li = ownEntry(id);
  if (!li) return false;
  settle(li, "rejected", `not applied: ${message}`);
  return true;
}

/** A prompt was applied (ours or anybody's); the ones it replaced before any block say so. */
export function addApplied(p) {
  for (const id of p.superseded ?? []) {
    const li = ownEntry(id);
    if (li?.classList.contains("pending")) {
      settle(li, "superseded", "superseded: a newer prompt replaced it before it reached the screen");
    }
  }
  const item = appliedItem(p);
  const own = ownEntry(p.id);
  if (own) {
    own.remove();
    item.dataset.own = "true";
  }
  els.applied.prepend(item);
  trim();
}

/** The connection dropped: what was still on its way may never be applied. */
export function markUnsent(message) {
  for (const li of els.applied.querySelectorAll("li.pending")) settle(li, "rejected", message);
}

// -- recording ------------------------------------------------------------------------------------------
const RECORDINGS = "/api/recordings/";

/** Seconds as mm:ss (h:mm:ss from an hour on). */
export function elapsed(seconds) {
  const s = Math.max(0, Math.floor(seconds ?? 0));
  const two = (n) => String(n).padStart(2, "0");
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}:${two(m)}:${two(s % 60)}` : `${two(m)}:${two(s % 60)}`;
}

/**
 * The Record button and the indicator. `phase`: "idle", "starting", "recording" or "stopping";
 * `seconds`: of video recorded so far (while recording).
 */
export function showRecording(phase, seconds = 0) {
  const on = phase === "recording" || phase === "stopping";
  els.record.textContent = phase === "starting" ? "Starting…" : phase === "stopping" ? "Saving…"
    : on ? "Stop recording" : "Record";
  els.record.setAttribute("aria-pressed", on ? "true" : "false");
  els.record.dataset.phase = phase;
  els.record.disabled = phase === "starting" || phase === "stopping" || !controlsEnabled;
  els.recIndicator.hidden = !on;
  els.recIndicator.dataset.phase = phase;
  if (on) els.recTime.textContent = phase === "stopping" ? `${elapsed(seconds)} · saving` : elapsed(seconds);
}

/** A finished (or failed) recording: links to download its video and its timeline. */
export function showRecordingLinks(rec) {
  els.recordingLink.href = rec.url;
  els.recordingLink.textContent = rec.name;
  els.recordingTimeline.href = RECORDINGS + encodeURIComponent(rec.sidecar);
  els.recordingTimeline.textContent = rec.sidecar;
  els.recordingLength.textContent = `(${elapsed(rec.seconds)}, ${count(rec.frames)} frames)`;
  els.recordingLinks.hidden = false;
}

// -- timeline -------------------------------------------------------------------------------------------
const TIMELINE_HINT = "a Scope workflow (.scope-workflow.json) or timeline (.json), or a recording's .timeline.json";

/** Whether a timeline plays (state.timeline), and which segment of it; `name`: its file, when this page sent it. */
export function showTimeline(timeline, name) {
  els.timelineStop.hidden = !timeline;
  if (!timeline) {
    els.timelineState.textContent = TIMELINE_HINT;
    return;
  }
  const at = Math.min(timeline.segments, timeline.segments - timeline.left);
  els.timelineState.textContent = `playing ${name ?? "a timeline"}: segment ${at} of ${timeline.segments}, ` +
    `${Math.round(timeline.duration)} s`;
}

export function showTimelineLoading(name) {
  els.timelineState.textContent = `sending ${name}…`;
}

// -- notices: things to know that are not errors -----------------------------------------------------------
const NOTICE_MS = 12000;
const NOTICES = 3;

export function showInfo(message) {
  const p = document.createElement("p");
  p.textContent = message;
  els.info.append(p);
  while (els.info.children.length > NOTICES) els.info.firstElementChild.remove();
  setTimeout(() => p.remove(), NOTICE_MS);
}

// -- segments: the rewind points the server keeps ------------------------------------------------------------
const SEGMENT_CHARS = 80;
let controlsEnabled = false;
let onRewind = () => {};

const truncate = (text, n) => {
  const chars = [...text];
  return chars.length <= n ? text : `${chars.slice(0, n - 1).join("").trimEnd()}…`;
};

/** `callback(segment)` when the performer asks to rewind to a segment. */
export function onRewindClick(callback) {
  onRewind = callback;
}

function segmentItem(seg) {
  const li = entry(truncate(seg.prompt, SEGMENT_CHARS), `segment ${seg.segment} · ${clock(seg.time)} · block ${seg.block}`);
  li.dataset.segment = String(seg.segment);
  li.title = seg.prompt;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "rewind";
  button.textContent = "↺";
  button.title = "rewind to this segment";
  button.setAttribute("aria-label", `rewind to segment ${seg.segment}: ${truncate(seg.prompt, SEGMENT_CHARS)}`);
  button.disabled = !controlsEnabled;
  button.addEventListener("click", () => onRewind(seg.segment));
  li.prepend(button);
  return li;
}

/** Rebuild the list from the state's `segments` (oldest first), unless it is the same. */
export function showSegments(segments) {
  const key = JSON.stringify(segments.map((s) => [s.segment, s.prompt]));
  if (els.segments.dataset.key === key) return;
  els.segments.dataset.key = key;
  els.segments.replaceChildren(...segments.map(segmentItem));
}

/** A rewind to `segment` was sent (`state`: "sending") or queued ("queued"); null: no rewind is on its way. */
export function markRewind(segment, state) {
  for (const li of els.segments.children) {
    if (state && li.dataset.segment === String(segment)) li.dataset.rewind = state;
    else delete li.dataset.rewind;
  }
}

// -- connected or not: what can be sent ----------------------------------------------------------------------
export function setControlsEnabled(on) {
  controlsEnabled = on;
  els.send.disabled = !on;
  els.timelineFile.disabled = !on;
  els.timelineStop.disabled = !on;
  els.tap.disabled = !on;
  els.cueStore.disabled = !on;
  for (const b of els.segments.querySelectorAll("button")) b.disabled = !on;
  if (!on) els.record.disabled = true;
  else if (els.record.dataset.phase !== "starting" && els.record.dataset.phase !== "stopping") els.record.disabled = false;
}

/** Whether the server can enhance (state.enhancer); when it cannot, the reason is written beside
 * the toggle (not only in its tooltip, which touch screens and a quick look never show). */
export function showEnhancer(enhancer) {
  const available = Boolean(enhancer?.available);
  els.enhance.disabled = !available;
  if (!available) els.enhance.checked = false;
  const why = available ? "" : (enhancer?.notice ?? "this server has no AI enhancement");
  els.enhance.parentElement.title = available
    ? "have the AI rewrite the prompt first; you review it before it goes live" : why;
  els.enhanceNote.textContent = why ? `${why[0].toUpperCase()}${why.slice(1)}${/[.!?]$/.test(why) ? "" : "."}` : "";
  els.enhanceNote.hidden = !why;
}

/** The review panel: null hides it; {waiting: text} says the AI is at work; else the `enhanced` message. */
export function showReview(r) {
  els.review.hidden = r === null;
  if (r === null) return;
  const busy = Boolean(r.waiting);
  for (const b of [els.reviewAccept, els.reviewRegen, els.reviewEdit]) b.disabled = busy;
  els.reviewInput.textContent = `You wrote: ${busy ? r.waiting : r.input}`;
  if (busy) {
    els.reviewMeta.textContent = "The AI is rewriting it…";
    return;
  }
  els.reviewText.value = r.text;
  els.reviewMeta.textContent = r.source === "ai"
    ? `${r.input_tokens} + ${r.output_tokens} tokens, about $${r.cost_usd.toFixed(4)}, ${Math.round(r.ms)} ms`
    : (r.error ?? "Not rewritten: this is your text as written.");
}

// -- the cue bank --------------------------------------------------------------------------------------------
let onCue = () => {};

/** `callback(action, cue)` when the performer clicks a cue ("fire") or its arm button ("arm"). */
export function onCueClick(callback) {
  onCue = callback;
}

function cueItem(c, { armed, armedReady, prompt, midi }) {
  const li = document.createElement("li");
  li.dataset.cue = String(c.cue);
  const isArmed = c.armed || armed === c.cue;
  li.dataset.armed = isArmed ? (armedReady ? "ready" : "encoding") : "false";
  li.dataset.live = prompt != null && c.label === prompt ? "true" : "false";

  const fire = document.createElement("button");
  fire.type = "button";
  fire.className = "cue-fire";
  fire.dataset.learn = `fire:${c.cue}`;
  const key = c.cue <= 9 ? ` (key ${c.cue})` : "";
  const glide = c.transition ? `; its own ${c.transition.method} glide over ${c.transition.blocks} blocks` : "";
  fire.title = `fire cue ${c.cue}${key}: ${c.label}${glide}${midi(`fire:${c.cue}`)}`;
  const num = document.createElement("span");
  num.className = "cue-num";
  num.textContent = String(c.cue);
  const name = document.createElement("span");
  name.className = "cue-name";
  name.textContent = c.name || c.label;
  const mark = document.createElement("span");
  mark.className = "cue-armed";
  mark.textContent = isArmed ? (armedReady ? "armed" : "arming…") : "";
  fire.append(num, name, mark);
  fire.addEventListener("click", () => onCue("fire", c.cue));

  const arm = document.createElement("button");
  arm.type = "button";
  arm.className = "cue-arm";
  arm.dataset.learn = `arm:${c.cue}`;
  arm.textContent = "arm";
  arm.title = `arm cue ${c.cue}${c.cue <= 9 ? ` (shift+${c.cue})` : ""}: encode it now so it fires without encoder time` +
    midi(`arm:${c.cue}`);
  arm.setAttribute("aria-pressed", isArmed ? "true" : "false");
  arm.addEventListener("click", () => onCue("arm", c.cue));
  li.append(fire, arm);
  return li;
}

/**
 * The state's cues (filled slots), which one is armed (and encoded), which one is on screen;
 * `midi(targetKey)`: a note on the MIDI control mapped to a target ("" for none).
 */
export function showCues(cues, { armed = null, armedReady = false, prompt = null, midi = () => "" } = {}) {
  const list = cues ?? [];
  const key = JSON.stringify([list, armed, armedReady, prompt, list.map((c) => [midi(`fire:${c.cue}`), midi(`arm:${c.cue}`)])]);
  if (els.cues.dataset.key === key) return;
  els.cues.dataset.key = key;
  els.cues.replaceChildren(...list.map((c) => cueItem(c, { armed, armedReady, prompt, midi })));
}

/** A cue fired from this page is on its way: its button says so until the next state. */
export function markFiring(cue) {
  for (const li of els.cues.children) {
    if (li.dataset.cue !== String(cue)) continue;
    li.dataset.firing = "true";
    setTimeout(() => delete li.dataset.firing, 3000);    // (refused, or the state rebuilt the list already)
  }
}

/** The state's `last_fire`. */
export function showLastFire(last) {
  if (!last) {
    els.lastFire.textContent = "";
    return;
  }
  const on = last.quantize === "none" ? "at the next block" : `on the ${last.quantize}`;
  const off = last.offset_ms != null ? `, ${Math.round(last.offset_ms)} ms after it` : "";
  els.lastFire.textContent = `last fired: cue ${last.cue} ${on}${off}`;
}

/** The cue number the store form suggests: `n` (the first empty slot) unless the performer typed one. */
export function suggestCueNumber(n) {
  if (document.activeElement === els.cueNumber) return;
  if (els.cueNumber.value === "" || els.cueNumber.dataset.suggested === els.cueNumber.value) {
    els.cueNumber.value = String(n);
    els.cueNumber.dataset.suggested = String(n);
  }
}

// -- tempo and the beat -------------------------------------------------------------------------------------
let beatClock = null;
let beatTimer = null;

/** The state's `tempo`: the fields (unless being edited), where it comes from, why Link is not leading. */
export function showTempo(tempo) {
  if (!tempo) return;
  if (document.activeElement !== els.bpm) els.bpm.value = String(Math.round(tempo.bpm * 10) / 10);
  if (document.activeElement !== els.beatsPerBar) els.beatsPerBar.value = String(tempo.beats_per_bar);
  els.tempoSource.textContent = tempo.source === "link"
    ? `Ableton Link: following the session${tempo.peers != null ? ` (${tempo.peers} peer${tempo.peers === 1 ? "" : "s"})` : ""}`
    : "internal clock (tap, or type a BPM)";
  els.tempoSource.dataset.source = tempo.source;
  els.tempoNotice.hidden = !tempo.notice;
  els.tempoNotice.textContent = tempo.notice ?? "";
}

function drawBeat() {
  const n = beatClock.beatsPerBar;
  if (els.beat.children.length !== n) {
    els.beat.replaceChildren(...Array.from({ length: n }, (_, i) => {
      const dot = document.createElement("span");
      dot.className = i === 0 ? "beat-dot downbeat" : "beat-dot";
      return dot;
    }));
  }
  const at = beatClock.barBeatAt();
  for (const [i, dot] of [...els.beat.children].entries()) {
    const on = i === at;
    if (on) {
      dot.classList.remove("flash");
      void dot.offsetWidth;            // restart the flash
      dot.classList.add("flash");
    }
    dot.dataset.on = on ? "true" : "false";
  }
  els.beat.dataset.beat = String(at + 1);
  els.beatCount.textContent = `beat ${at + 1} of ${n} · ${Math.round(beatClock.bpm * 10) / 10} BPM`;
}

function tickBeat() {
  clearTimeout(beatTimer);
  if (!beatClock?.known) return;
  drawBeat();
  // the next beat, plus a hair so it is past it (a timer, not a frame loop: one wake-up a beat)
  beatTimer = setTimeout(tickBeat, beatClock.untilNextBeat() + 2);
}

/** Animate the beat indicator from `clock` (a tempo.js BeatClock); call again when it changes. */
export function runBeat(clock) {
  beatClock = clock;
  tickBeat();
}

// -- transition ---------------------------------------------------------------------------------------------
/** The default transition (fields, unless being edited) and the glide under way, if any. */
export function showTransition(def, glide) {
  if (def) {
    if (document.activeElement !== els.transitionBlocks) els.transitionBlocks.value = String(def.blocks);
    if (document.activeElement !== els.transitionMethod) els.transitionMethod.value = def.method;
  }
  els.transitionState.hidden = !glide;
  if (glide) {
    els.transitionText.textContent = `transition in progress: ${glide.method} glide to “${truncate(glide.to ?? "", 60)}”, ` +
      `block ${glide.step} of ${glide.blocks}`;
    els.transitionProgress.max = glide.blocks || 1;
    els.transitionProgress.value = glide.step;
  }
}

// -- blend ---------------------------------------------------------------------------------------------------
export function showBlendValue(label) {
  els.blendValue.textContent = label;
}

export function showBlendHint(text, bad = false) {
  els.blendHint.textContent = text;
  els.blendHint.dataset.bad = bad ? "true" : "false";
}

// -- MIDI -------------------------------------------------------------------------------------------------------
/** One line: what MIDI this page has (none, denied, ready, its inputs). */
export function showMidiStatus(text, phase) {
  els.midiStatus.textContent = text;
  els.midiStatus.dataset.phase = phase ?? "";
}

/** A sentence about the last MIDI thing done (learned, imported, refused); `bad`: a refusal. */
export function showMidiMessage(text, bad = false) {
  els.midiMessage.textContent = text ?? "";
  els.midiMessage.dataset.bad = bad ? "true" : "false";
}

/** Learn mode on or off: the targets a click can pick are marked while it is on. */
export function showLearning(on) {
  document.body.dataset.learning = on ? "true" : "false";
  els.midiLearn.setAttribute("aria-pressed", on ? "true" : "false");
  els.midiLearn.textContent = on ? "Done" : "Learn";
  for (const el of document.querySelectorAll("[data-learn]")) el.dataset.learnPicked = "false";
}

export function markLearnTarget(key) {
  for (const el of document.querySelectorAll("[data-learn]")) {
    el.dataset.learnPicked = el.dataset.learn === key ? "true" : "false";
  }
}

/** The mappings, each with a remove button (`onRemove(targetKey)`). */
export function showMidiMappings(items, onRemove) {
  els.midiMappings.replaceChildren(...items.map(({ key, control, target }) => {
    const li = document.createElement("li");
    li.dataset.target = key;
    const text = document.createElement("span");
    text.textContent = `${control} → ${target}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.textContent = "×";
    remove.title = `forget this mapping (${target})`;
    remove.setAttribute("aria-label", `forget the mapping of ${target}`);
    remove.addEventListener("click", () => onRemove(key));
    li.append(text, remove);
    return li;
  }));
}
