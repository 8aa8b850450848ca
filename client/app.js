// The page: connect, show the stream, send what the performer types, show what comes back.
import { connect } from "./rtc.js";
import { reportPhotons } from "./photon.js";
import { Caption } from "./caption.js";
import { ControlChannel, PROTOCOL_VERSION } from "./control.js";
import { encode } from "./vendor/msgpack/index.mjs";
import * as ui from "./ui.js";
import { keyAction, blendPrompts, blendLabel, throttle, firstFreeCue, BLEND_INTERVAL_MS } from "./cues.js";
import { BeatClock } from "./tempo.js";
import { MidiMap, MidiMapError, openMidi, describeControl, describeTarget, targetKey, parseTarget,
         MAX_FILE_BYTES } from "./midi.js";

const { els } = ui;
const DEFAULT_PROMPT_CHARS = 2000;   // until the server's hello says (state.limits.prompt_chars)
const DEFAULT_MESSAGE_BYTES = 65536; // until the server's hello says (state.limits.message_bytes)

let session = null;     // {pc, channel, session, close}
let control = null;     // ControlChannel, while its data channel is open
let state = {};         // the server's state, as last heard
let retryTimer = null;
let watching = false;   // whether this page reports the frames it presents (photon.js): the caption waits for them
let recRequest = null;      // {id, on}: a record command of this page, until the server answers it
let recSeconds = 0;         // seconds of video recorded, as last heard
let timelineRequest = null; // {id, name}: the timeline this page sent, until the server acks or refuses it
let timelineNext = null;    // the file name of the timeline acked, until the state says it plays
let timelineName = null;    // the file name of the timeline playing, when this page sent it
let rewindRequest = null;   // {id, segment, acked}
let seedRequest = null;     // {id, seed, acked}: a seed this page sent, until the state says it runs
let enhanceRequest = null;  // {id, text}: the enhance this page is waiting for

const promptLimit = () => state.limits?.prompt_chars ?? DEFAULT_PROMPT_CHARS;
const messageLimit = () => state.limits?.message_bytes ?? DEFAULT_MESSAGE_BYTES;
// the server counts characters (code points) of the trimmed text; so does the page
const promptLength = (text) => [...text].length;

// Every message on the message line has a kind (ui.showError): a command's error is of its kind, and
// the command's next success (its ack: queued) clears it; `sent` remembers the kind of this page's ids.
const KINDS = { enhance: "prompt", resume: "pause", arm: "cue", fire: "cue", tap: "tempo" };
const kindOf = (type) => KINDS[type] ?? type;
const sent = new Map();             // request id -> kind, the newest SENT_KEPT
const SENT_KEPT = 256;

// the caption ("the prompt on screen") changes when this page shows the switch's first frame
const caption = new Caption((text) => {
  ui.showCaption(text);
  showStage();                        // (the cue on screen is marked live)
});
(window.__longlive ??= {}).caption = caption.hooks;        // what the caption did, when (for tests)

/** When the frames starting at the state's `generated` go on air, ms from the state: after the
 * frames buffered, and the block being made (a state's prompt change begins there). */
const onAirMs = (s) =>
  Math.max(0, (s.generated ?? 0) - (s.frame ?? 0)) / (s.fps || 16) * 1000 + (s.stats?.block_ms ?? 0);

async function start() {
  clearTimeout(retryTimer);
  ui.setStatus("connecting");
  ui.setOverlay("Connecting…");
  let current = null;
  try {
    current = await connect({
      onTrack: (stream) => {
        els.video.srcObject = stream;
        els.video.play().catch(() => {});
      },
      onState: (s) => {
        if (current !== null && current !== session) return;        // an old connection
        if (s === "failed" || s === "closed") lost("The connection to the server was lost", { cause: "lost" });
        else if (s === "disconnected") {
          lost("The connection to the server is interrupted", { retry: false, cause: "interrupted" });
        }
        else if (s === "connected" && control?.open) live();
      },
    });
  } catch (err) {
    ui.showError(`Cannot connect: ${err.message}`, "connection");
    ui.setStatus("disconnected");
    noteLost("unreachable", `Cannot connect: ${err.message}`);
    ui.setOverlay("Cannot reach the server — retrying…");
    scheduleRetry();
    return;
  }
  session = current;
  const channel = session.channel;
  const c = new ControlChannel(channel);
  wireControl(c);
  // the switch reached this screen: the measured figure replaces the server's estimate
  // and the caption changes when its first frame is on this screen
  watching = reportPhotons(els.video, c, (msg, presentedAt) => {
    ui.showLatency(msg.latency_ms, "measured");
    caption.presented(msg, presentedAt);
  });
  const opened = () => {
    if (session !== current) return;
    control = c;
    if (session.pc.connectionState === "connected") live();
  };
  if (channel.readyState === "open") opened();
  else channel.addEventListener("open", opened);
  // the server closes the channel when it stops or ends the session: say so now, not when ICE gives up
  channel.addEventListener("close", () => {
    if (session === current) lost("The server closed the connection", { cause: "closed" });
  });
}

/** Connected and the control channel open: the state decides the pill. */
function live() {
  delete els.status.dataset.lost;
  els.status.removeAttribute("title");
  ui.setControlsEnabled(true);
  ui.showState(state);
  if (els.video.readyState >= 2 && !els.video.paused) ui.setOverlay(null);
}

/**
 * Why the page is not live, kept on the status pill (data-lost: closed, lost, interrupted or
 * unreachable; its title says it in words) from the first loss until the page is live again:
 * the overlay moves on to the reconnection attempts, this stays.
 */
function noteLost(cause, why) {
  if (els.status.dataset.lost) return;
  els.status.dataset.lost = cause;
  els.status.title = `${why} (${new Date().toLocaleTimeString()})`;
}

/** The picture is no longer live: say so at once, over the frozen frame. */
function lost(why, { retry = true, cause } = {}) {
  noteLost(cause, why);
  ui.setStatus("disconnected", "disconnected");
  ui.setOverlay(`${why} — ${retry ? "reconnecting" : "waiting for it"}…`);
  ui.setControlsEnabled(false);
  if (retry) {
    ui.markUnsent("not applied: the connection dropped before the server applied it");
    control = null;
    scheduleRetry();
  }
}

function scheduleRetry() {
  session?.close();
  session = null;
  control = null;
  clearTimeout(retryTimer);
  retryTimer = setTimeout(start, 2000);
}

function wireControl(c) {
  c.on("hello", (msg) => {
    ui.clearError("connection");
    if (msg.protocol !== PROTOCOL_VERSION) {
      ui.showError(`The server speaks protocol ${msg.protocol}, this page ${PROTOCOL_VERSION}.`, "protocol");
    }
    state = msg.state;
    // what this page asked for on an earlier connection will not be answered on this one
    recRequest = timelineRequest = timelineNext = rewindRequest = seedRequest = null;
    caption.now(state.prompt);
    recSeconds = state.recording?.seconds ?? 0;
    ui.showNotice(state);
    ui.showState(state, isLive());
    ui.showHistory(state.prompts ?? []);
    if (state.stats) ui.showStats(state.stats, state.fps);
    ui.showEnhancer(state.enhancer);
    showExtras();
    showStage();
    if (state.role === "viewer") {
      ui.showInfo("Watching only: this server steers with a performer token. Open the page as /?token=… to perform.");
    }
    checkPrompt();
  });
  c.on("state", (msg) => {
    const engine = state.engine;
    state = { ...state, ...msg.state };
    ui.showState(state, isLive());
    ui.showEnhancer(state.enhancer);
    caption.stateSays(state.prompt, onAirMs(state));       // (a rewind's prompt; a switch says more, below)
    if (engine === "restarting" && state.engine === "running") ui.clearError("stream");
    // the first state after the ack comes from the block boundary that applied it
    if (msg.id == null && rewindRequest?.acked) {
      ui.markRewind(rewindRequest.segment, null);
      ui.showDone(`Rewound to segment ${rewindRequest.segment}.`, "rewind");
      rewindRequest = null;
    }
    if (msg.id == null && seedRequest?.acked && state.seed === seedRequest.seed) {
      ui.showDone(`New seed ${seedRequest.seed}: the stream restarted with it.`, "seed");
      seedRequest = null;
    }
    showExtras();                         // (a state comes with every segment kept, so the list is current)
    showStage();
  });
  c.on("stats", (msg) => {
    state.stats = msg;
    ui.showStats(msg, state.fps);
    if (msg.recording_s != null) recSeconds = msg.recording_s;
    showRecording();
  });
  c.on("ack", (msg) => {
    if (sent.has(msg.id)) ui.clearError(sent.get(msg.id));   // it went through: an error of its kind is over
    ui.markQueued(msg.id);
    if (rewindRequest && msg.id === rewindRequest.id) {
      rewindRequest.acked = true;
      ui.markRewind(rewindRequest.segment, "queued");
    }
    if (seedRequest && msg.id === seedRequest.id) seedRequest.acked = true;
    if (timelineRequest && msg.id === timelineRequest.id) {
      timelineNext = timelineRequest.name;
      timelineRequest = null;
    }
  });
  c.on("recording", (msg) => {
    if (msg.status === "started") {
      state.recording = { name: msg.name, url: msg.url, sidecar: msg.sidecar, frames: msg.frames, seconds: msg.seconds };
      recSeconds = msg.seconds;
      if (recRequest?.on === true) recRequest = null;
    } else {                              // stopped, or failed (an error event says why; what was written is kept)
      state.recording = null;
      if (recRequest?.on === false) recRequest = null;
      ui.showRecordingLinks(msg);
    }
    showRecording();
  });
  c.on("notice", (msg) => ui.showInfo(msg.message));
  c.on("enhanced", (msg) => {
    if (!enhanceRequest || msg.id !== enhanceRequest.id) return;   // an older request, overtaken
    enhanceRequest = null;
    ui.clearError("prompt");
    ui.showReview(msg);
    if (msg.error) ui.showInfo(msg.error);
    els.reviewText.focus();
  });
  c.on("prompt_applied", (msg) => {
    state.prompt = msg.text;
    if (msg.cue != null) {            // (the next state says it too; this shows it with the picture)
      const quantize = msg.offset_ms == null ? "none" : (firedQuantize.get(msg.cue) ?? "beat or bar");
      state.last_fire = { cue: msg.cue, quantize, offset_ms: msg.offset_ms };
    }
    ui.addApplied(msg);
    ui.showLatency(msg.latency_ms + msg.plays_in_ms);
    // the caption follows the picture: it changes when this page shows the block's first frame
    caption.switched(msg, watching);
  });
  c.on("error", (msg) => {
    // of the kind of the command it refuses; without an id, the stream's own (a generator failure)
    const kind = sent.get(msg.id) ?? (msg.id == null ? "stream" : "general");
    // a refused prompt: its entry in the list says why (and the message shows too)
    ui.markRejected(msg.id, msg.message);
    if (msg.id != null && seedRequest?.id === msg.id) seedRequest = null;
    if (msg.id != null && recRequest?.id === msg.id) {
      recRequest = null;
      showRecording();
    }
    if (msg.id != null && rewindRequest?.id === msg.id) {
      ui.markRewind(rewindRequest.segment, null);
      rewindRequest = null;
    }
    if (msg.id != null && timelineRequest?.id === msg.id) {
      const why = msg.message.replace(/^timeline\.timeline: /, "");
      ui.showError(`The timeline ${timelineRequest.name} was refused: ${why}`, "timeline");
      timelineRequest = null;
      ui.showTimeline(state.timeline, timelineName);
      return;
    }
    ui.showError(msg.message, kind);
  });
}

/** Recording, timeline and segments, from the state (and what this page is waiting for). */
function showExtras() {
  showRecording();
  if (!state.timeline) timelineName = null;
  else if (timelineNext) {
    timelineName = timelineNext;
    timelineNext = null;
    ui.clearError("timeline");
  }
  if (!timelineRequest) ui.showTimeline(state.timeline, timelineName);
  ui.showSegments(state.segments ?? []);
}

function showRecording() {
  let phase = state.recording ? "recording" : "idle";
  if (recRequest) phase = recRequest.on ? "starting" : "stopping";
  if (state.recording?.seconds != null && state.recording.seconds > recSeconds) recSeconds = state.recording.seconds;
  ui.showRecording(phase, recSeconds);
}

const isLive = () => control !== null && session?.pc.connectionState === "connected";

function send(type, fields) {
  if (!control?.open) {
    ui.showError("Not connected to the server: nothing was sent.", "connection");
    return null;
  }
  try {
    const id = control.send(type, fields);
    sent.set(id, kindOf(type));
    if (sent.size > SENT_KEPT) sent.delete(sent.keys().next().value);
    return id;
  } catch (err) {
    ui.showError(err.message, kindOf(type));
    return null;
  }
}

// -- the performer's controls --------------------------------------------------------
function checkPrompt() {
  ui.showPromptLength(promptLength(els.prompt.value.trim()), promptLimit());
}

els.prompt.addEventListener("input", checkPrompt);

els.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = els.prompt.value.trim();
  const chars = promptLength(text);
  if (!chars) {
    ui.showError("Type a prompt first: the box is empty.", "prompt");
    els.prompt.focus();
    return;
  }
  if (chars > promptLimit()) {
    ui.showError(`This prompt is ${chars.toLocaleString("en-US")} characters long; the server takes at most ` +
                 `${promptLimit().toLocaleString("en-US")}. Shorten it, then switch. Nothing was sent.`, "prompt");
    checkPrompt();
    return;
  }
  if (els.enhance.checked) {
    askEnhance(text);
    return;
  }
  sendPrompt(text);
});

function sendPrompt(text) {
  const id = send("prompt", { text });
  if (id) {
    ui.showPending(id, text);
    els.prompt.select();
  }
  return id;
}

// -- AI enhancement: the rewrite is reviewed before it goes live ----------------------------
function askEnhance(text) {
  const id = send("enhance", { text });
  if (id) {
    enhanceRequest = { id, text };
    ui.showReview({ waiting: text });
  }
}

els.reviewAccept.addEventListener("click", () => {
  const text = els.reviewText.value.trim();
  if (!text) {
    ui.showError("The enhanced prompt is empty: edit it or cancel.", "prompt");
    return;
  }
  if (promptLength(text) > promptLimit()) {
    ui.showError(`The enhanced prompt is ${promptLength(text)} characters long; the server takes at most ${promptLimit()}.`,
                 "prompt");
    return;
  }
  if (sendPrompt(text)) ui.showReview(null);
});
els.reviewRegen.addEventListener("click", () => {
  const input = els.reviewInput.textContent.replace(/^You wrote: /, "");
  askEnhance(input);
});
els.reviewEdit.addEventListener("click", () => {
  els.reviewText.focus();
  els.reviewText.setSelectionRange(els.reviewText.value.length, els.reviewText.value.length);
});
els.reviewCancel.addEventListener("click", () => {
  enhanceRequest = null;
  ui.showReview(null);
});

els.prompt.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    els.form.requestSubmit();
  }
});

els.pause.addEventListener("click", () => send(state.paused ? "resume" : "pause"));

els.seedForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const seed = Number(els.seed.value);
  if (!Number.isSafeInteger(seed) || seed < 0) {
    ui.showError("The seed must be a whole number, 0 or more.", "seed");
    return;
  }
  const id = send("seed", { seed });
  if (id) seedRequest = { id, seed, acked: false };
});

els.seedRandom.addEventListener("click", () => {
  els.seed.value = String(Math.floor(Math.random() * 2 ** 31));
  els.seedForm.requestSubmit();
});

// -- recording ------------------------------------------------------------------------------
els.record.addEventListener("click", () => {
  if (recRequest) return;                  // already on its way
  const on = !state.recording;
  const id = send("record", { on });
  if (id) {
    recRequest = { id, on };
    if (on) recSeconds = 0;
  }
  showRecording();
});

// -- timelines -------------------------------------------------------------------------------
const kib = (bytes) => `${Math.ceil(bytes / 1024).toLocaleString("en-US")} KiB`;

function jsonKind(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  return `a ${typeof value}`;
}

async function playTimelineFile(file) {
  const limit = messageLimit();
  const tooLarge = (bytes) =>
    `${file.name} is ${kib(bytes)}, more than the ${kib(limit)} the server takes in one message, so it was not sent.`;
  if (file.size > limit) {
    ui.showError(tooLarge(file.size), "timeline");
    return;
  }
  let timeline;
  try {
    timeline = JSON.parse(await file.text());
  } catch (err) {
    ui.showError(`${file.name} is not valid JSON (${err.message}); nothing was sent.`, "timeline");
    return;
  }
  if (timeline === null || typeof timeline !== "object" || Array.isArray(timeline)) {
    ui.showError(`${file.name} is not a timeline: it holds ${jsonKind(timeline)}, not a JSON object; nothing was sent.`,
                 "timeline");
    return;
  }
  let bytes;
  try {
    bytes = encode({ type: "timeline", id: "x".repeat(32), timeline }).byteLength;
  } catch (err) {
    ui.showError(`${file.name} cannot be sent: ${err.message}.`, "timeline");
    return;
  }
  if (bytes > limit) {
    ui.showError(tooLarge(bytes), "timeline");
    return;
  }
  const id = send("timeline", { timeline });
  if (id) {
    timelineRequest = { id, name: file.name };
    ui.showTimelineLoading(file.name);
  }
}

els.timelineFile.addEventListener("change", () => {
  const file = els.timelineFile.files?.[0];
  els.timelineFile.value = "";             // picking the same file again plays it again
  if (file) playTimelineFile(file);
});

els.timelineStop.addEventListener("click", () => send("timeline", { timeline: null }));

// -- rewind ----------------------------------------------------------------------------------
ui.onRewindClick((segment) => {
  const id = send("rewind", { segment });
  if (id) {
    if (rewindRequest) ui.markRewind(rewindRequest.segment, null);
    rewindRequest = { id, segment, acked: false };
    ui.markRewind(segment, "sending");
  }
});

// -- the performer deck: cues, tempo, transition, blend ------------------------------------------
const beat = new BeatClock();
const firedQuantize = new Map();     // cue -> the quantize this page last fired it with

/** Cues, tempo, transition and last fire, from the state. */
function showStage() {
  ui.showCues(state.cues, {
    armed: state.armed ?? null, armedReady: Boolean(state.armed_ready), prompt: caption.text ?? null,
    midi: (key) => {
      const control = midi.controlFor(key);
      return control ? ` · MIDI ${describeControl(control)}` : "";
    },
  });
  ui.suggestCueNumber(firstFreeCue(state.cues));
  ui.showLastFire(state.last_fire);
  if (state.tempo) {
    beat.update(state.tempo);
    ui.showTempo(state.tempo);
    ui.runBeat(beat);
  }
  ui.showTransition(state.transition_default, state.transition);
}

function fire(cue) {
  if (!state.cues?.some((c) => c.cue === cue)) {
    ui.showError(`Cue ${cue} is empty: store a prompt in it first.`, "cue");
    return;
  }
  const quantize = els.quantize.value;
  if (send("fire", { cue, quantize })) {
    firedQuantize.set(cue, quantize);
    ui.markFiring(cue);
  }
}

function arm(cue) {
  if (!state.cues?.some((c) => c.cue === cue)) {
    ui.showError(`Cue ${cue} is empty: nothing to arm.`, "cue");
    return;
  }
  send("arm", { cue });
}

// a tap says when it happened on this page's clock (the input event's time, in seconds), so the
// server measures the beat between taps where the finger was, not where the network delivered it
const tap = (ev) => send("tap", { at: ev.timeStamp / 1000 });

ui.onCueClick((action, cue) => (action === "arm" ? arm(cue) : fire(cue)));
els.tap.addEventListener("click", tap);

document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && learning) {
    setLearning(false);
    return;
  }
  const what = keyAction(ev);
  if (!what) return;
  ev.preventDefault();
  if (what.action === "tap") tap(ev);
  else if (what.action === "arm") arm(what.cue);
  else fire(what.cue);
});

// Enter in a deck field sends it and hands the keys back to the cues
for (const field of [els.bpm, els.beatsPerBar, els.transitionBlocks, els.cueNumber, els.cueName]) {
  field.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") field.blur();
  });
}
for (const field of [els.bpm, els.beatsPerBar, els.transitionBlocks]) {
  field.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") {
      ev.preventDefault();
      field.blur();                       // (the change event sends it)
    }
  });
}

els.cueStoreForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const cue = Number(els.cueNumber.value);
  if (!Number.isInteger(cue) || cue < 1 || cue > 99) {
    ui.showError("A cue number is a whole number from 1 to 99.", "cue");
    return;
  }
  const text = els.prompt.value.trim();
  if (!promptLength(text)) {
    ui.showError("Type a prompt in the prompt box first: that is what a cue stores.", "cue");
    els.prompt.focus();
    return;
  }
  if (promptLength(text) > promptLimit()) {
    ui.showError(`This prompt is too long for a cue (the server takes at most ${promptLimit()} characters).`, "cue");
    return;
  }
  const name = els.cueName.value.trim();
  if (send("cue", { cue, text, ...(name ? { name } : {}) })) {
    ui.showInfo(`Cue ${cue} stored${name ? ` as “${name}”` : ""}.`);
    els.cueName.value = "";
    els.cueNumber.dataset.suggested = els.cueNumber.value;    // suggest the next free one again
    els.cueNumber.blur();
  }
});

function sendTempo() {
  const bpm = Number(els.bpm.value);
  const beatsPerBar = Number(els.beatsPerBar.value);
  if (!Number.isFinite(bpm) || bpm < 20 || bpm > 300) {
    ui.showError("The tempo must be between 20 and 300 BPM.", "tempo");
    if (state.tempo) els.bpm.value = String(state.tempo.bpm);
    return;
  }
  const fields = { bpm };
  if (Number.isInteger(beatsPerBar) && beatsPerBar >= 1 && beatsPerBar <= 16) fields.beats_per_bar = beatsPerBar;
  send("tempo", fields);
}
els.bpm.addEventListener("change", sendTempo);
els.beatsPerBar.addEventListener("change", sendTempo);

function sendTransition() {
  const blocks = Number(els.transitionBlocks.value);
  if (!Number.isInteger(blocks) || blocks < 0 || blocks > 64) {
    ui.showError("A transition is a whole number of blocks from 0 (a cut) to 64.", "transition");
    if (state.transition_default) els.transitionBlocks.value = String(state.transition_default.blocks);
    return;
  }
  send("transition", { blocks, method: els.transitionMethod.value });
}
const sendTransitionSoon = throttle(sendTransition, BLEND_INTERVAL_MS);    // a MIDI knob turns fast
els.transitionBlocks.addEventListener("change", sendTransition);
els.transitionMethod.addEventListener("change", sendTransition);

function sendBlend() {
  const a = els.blendA.value.trim(), b = els.blendB.value.trim();
  if (!a || !b) {
    ui.showBlendHint("Type both prompt A and prompt B first: nothing was sent.", true);
    return;
  }
  if (promptLength(a) > promptLimit() || promptLength(b) > promptLimit()) {
    ui.showBlendHint(`Each blend prompt can be at most ${promptLimit()} characters: nothing was sent.`, true);
    return;
  }
  const w = Number(els.blendWeight.value);
  if (send("prompt", { prompts: blendPrompts(a, b, w) })) ui.showBlendHint(`sent ${blendLabel(w)}`);
}
const sendBlendSoon = throttle(sendBlend, BLEND_INTERVAL_MS);
els.blendWeight.addEventListener("input", () => {
  ui.showBlendValue(blendLabel(els.blendWeight.value));
  if (!learning) sendBlendSoon();
});

// -- MIDI: learn, map, persist -------------------------------------------------------------------
let learning = false;
const loaded = MidiMap.load();
const midi = loaded.map;
if (loaded.error) ui.showMidiMessage(`${loaded.error[0].toUpperCase()}${loaded.error.slice(1)}.`, true);

function showMappings() {
  ui.showMidiMappings(midi.mappings.map((m) => ({
    key: targetKey(m.target), control: describeControl(m.control), target: describeTarget(m.target),
  })), (key) => {
    midi.remove(key);
    midi.save();
    showMappings();
  });
  if (state.cues) showStage();
}

function setLearning(on) {
  learning = on;
  midi.cancel();
  ui.showLearning(on);
  ui.showMidiMessage(on ? "Learn: click what a control should drive (a cue, an arm button, the glide, the blend slider)."
    : "");
}

els.midiLearn.addEventListener("click", () => setLearning(!learning));

// in learn mode a click on a target picks it (and does not fire, arm or move anything)
document.addEventListener("click", (ev) => {
  if (!learning) return;
  const el = ev.target.closest?.("[data-learn]");
  if (!el) return;
  ev.preventDefault();
  ev.stopPropagation();
  const target = midi.learn(parseTarget(el.dataset.learn));
  ui.markLearnTarget(el.dataset.learn);
  ui.showMidiMessage(`Move a control (a key, pad, knob or fader) for: ${describeTarget(target)}.`);
}, true);

function onMidi(data) {
  const action = midi.handle(data);
  if (!action) return;
  switch (action.type) {
    case "learned":
      midi.save();
      ui.markLearnTarget(null);
      ui.showMidiMessage(`Learned: ${describeControl(action.mapping.control)} → ${describeTarget(action.mapping.target)}. ` +
        "Click another target, or Done.");
      showMappings();
      break;
    case "fire":
      fire(action.cue);
      break;
    case "arm":
      arm(action.cue);
      break;
    case "transition_blocks":
      els.transitionBlocks.value = String(action.blocks);
      sendTransitionSoon();
      break;
    case "blend_weight":
      els.blendWeight.value = String(action.weight);
      ui.showBlendValue(blendLabel(action.weight));
      sendBlendSoon();
      break;
  }
}

els.midiExport.addEventListener("click", () => {
  const blob = new Blob([JSON.stringify(midi.toJSON(), null, 2) + "\n"], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "longlive-midi.json";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  ui.showMidiMessage(`Exported ${midi.size} mapping${midi.size === 1 ? "" : "s"} as longlive-midi.json.`);
});

els.midiImport.addEventListener("change", async () => {
  const file = els.midiImport.files?.[0];
  els.midiImport.value = "";
  if (!file) return;
  const refuse = (why) => ui.showMidiMessage(`${file.name} was not imported: ${why}; the mappings are unchanged.`, true);
  if (file.size > MAX_FILE_BYTES) {
    refuse(`it is larger than ${MAX_FILE_BYTES / 1024} KiB`);
    return;
  }
  let imported;
  try {
    imported = MidiMap.parse(await file.text());
  } catch (err) {
    if (!(err instanceof MidiMapError)) throw err;
    refuse(err.message);
    return;
  }
  setLearning(false);
  midi.clear();
  for (const m of imported.mappings) midi.bind(m.control, m.target);
  midi.save();
  showMappings();
  ui.showMidiMessage(`Imported ${midi.size} mapping${midi.size === 1 ? "" : "s"} from ${file.name}.`);
});

showMappings();
openMidi(onMidi, ui.showMidiStatus);

// hide the overlay once pictures arrive (and the connection is up)
els.video.addEventListener("playing", () => { if (isLive()) ui.setOverlay(null); });
window.addEventListener("pagehide", () => session?.close());

ui.setControlsEnabled(false);
showRecording();
checkPrompt();
start();
