// The page: connect, show the stream, send what the performer types, show what comes back.
import { connect } from "./rtc.js";
import { ControlChannel, PROTOCOL_VERSION } from "./control.js";
import { encode } from "./vendor/msgpack/index.mjs";
import * as ui from "./ui.js";

const { els } = ui;
const DEFAULT_PROMPT_CHARS = 2000;   // until the server's hello says (state.limits.prompt_chars)
const DEFAULT_MESSAGE_BYTES = 65536; // until the server's hello says (state.limits.message_bytes)

let session = null;     // {pc, channel, session, close}
let control = null;     // ControlChannel, while its data channel is open
let state = {};         // the server's state, as last heard
let retryTimer = null;
let captionTimer = null;
let recRequest = null;      // {id, on}: a record command of this page, until the server answers it
let recSeconds = 0;         // seconds of video recorded, as last heard
let timelineRequest = null; // {id, name}: the timeline this page sent, until the server acks or refuses it
let timelineNext = null;    // the file name of the timeline acked, until the state says it plays
let timelineName = null;    // the file name of the timeline playing, when this page sent it
let rewindRequest = null;   // {id, segment}
let enhanceRequest = null;  // {id, text}: the enhance this page is waiting for

const promptLimit = () => state.limits?.prompt_chars ?? DEFAULT_PROMPT_CHARS;
const messageLimit = () => state.limits?.message_bytes ?? DEFAULT_MESSAGE_BYTES;
// the server counts characters (code points) of the trimmed text; so does the page
const promptLength = (text) => [...text].length;

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
        if (s === "failed" || s === "closed") lost("The connection to the server was lost");
        else if (s === "disconnected") lost("The connection to the server is interrupted", { retry: false });
        else if (s === "connected" && control?.open) live();
      },
    });
  } catch (err) {
    ui.showError(`Cannot connect: ${err.message}`);
    ui.setStatus("disconnected");
    ui.setOverlay("Cannot reach the server — retrying…");
    scheduleRetry();
    return;
  }
  session = current;
  const channel = session.channel;
  const c = new ControlChannel(channel);
  wireControl(c);
  const opened = () => {
    if (session !== current) return;
    control = c;
    if (session.pc.connectionState === "connected") live();
  };
  if (channel.readyState === "open") opened();
  else channel.addEventListener("open", opened);
  // the server closes the channel when it stops or ends the session: say so now, not when ICE gives up
  channel.addEventListener("close", () => {
    if (session === current) lost("The server closed the connection");
  });
}

/** Connected and the control channel open: the state decides the pill. */
function live() {
  ui.setControlsEnabled(true);
  ui.showState(state);
  if (els.video.readyState >= 2 && !els.video.paused) ui.setOverlay(null);
}

/** The picture is no longer live: say so at once, over the frozen frame. */
function lost(why, { retry = true } = {}) {
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
    if (msg.protocol !== PROTOCOL_VERSION) ui.showError(`The server speaks protocol ${msg.protocol}, this page ${PROTOCOL_VERSION}.`);
    state = msg.state;
    // what this page asked for on an earlier connection will not be answered on this one
    recRequest = timelineRequest = timelineNext = rewindRequest = null;
    recSeconds = state.recording?.seconds ?? 0;
    ui.showNotice(state);
    ui.showState(state, isLive());
    ui.showHistory(state.prompts ?? []);
    if (state.stats) ui.showStats(state.stats, state.fps);
    ui.showEnhancer(state.enhancer);
    showExtras();
    checkPrompt();
  });
  c.on("state", (msg) => {
    state = { ...state, ...msg.state };
    ui.showState(state, isLive());
    ui.showEnhancer(state.enhancer);
    if (msg.id == null && rewindRequest) {
      ui.markRewind(rewindRequest.segment, null);
      rewindRequest = null;
    }
    showExtras();                         // (a state comes with every segment kept, so the list is current)
  });
  c.on("stats", (msg) => {
    state.stats = msg;
    ui.showStats(msg, state.fps);
    if (msg.recording_s != null) recSeconds = msg.recording_s;
    showRecording();
  });
  c.on("ack", (msg) => {
    ui.markQueued(msg.id);
    if (rewindRequest && msg.id === rewindRequest.id) ui.markRewind(rewindRequest.segment, "queued");
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
    ui.showReview(msg);
    if (msg.error) ui.showInfo(msg.error);
    els.reviewText.focus();
  });
  c.on("prompt_applied", (msg) => {
    state.prompt = msg.text;
    ui.addApplied(msg);
    ui.showLatency(msg.latency_ms + msg.plays_in_ms);
    // the caption follows the picture: the new block goes on air after the frames before it
    clearTimeout(captionTimer);
    captionTimer = setTimeout(() => ui.showState(state, isLive()), msg.plays_in_ms);
  });
  c.on("error", (msg) => {
    // a refused prompt: its entry in the list says why (and the message shows too)
    ui.markRejected(msg.id, msg.message);
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
      ui.showError(`The timeline ${timelineRequest.name} was refused: ${why}`);
      timelineRequest = null;
      ui.showTimeline(state.timeline, timelineName);
      return;
    }
    ui.showError(msg.message);
  });
}

/** Recording, timeline and segments, from the state (and what this page is waiting for). */
function showExtras() {
  showRecording();
  if (!state.timeline) timelineName = null;
  else if (timelineNext) {
    timelineName = timelineNext;
    timelineNext = null;
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
    ui.showError("Not connected to the server: nothing was sent.");
    return null;
  }
  try {
    return control.send(type, fields);
  } catch (err) {
    ui.showError(err.message);
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
    ui.showError("Type a prompt first: the box is empty.");
    els.prompt.focus();
    return;
  }
  if (chars > promptLimit()) {
    ui.showError(`This prompt is ${chars.toLocaleString("en-US")} characters long; the server takes at most ` +
                 `${promptLimit().toLocaleString("en-US")}. Shorten it, then switch. Nothing was sent.`);
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
    ui.showError("The enhanced prompt is empty: edit it or cancel.");
    return;
  }
  if (promptLength(text) > promptLimit()) {
    ui.showError(`The enhanced prompt is ${promptLength(text)} characters long; the server takes at most ${promptLimit()}.`);
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
    ui.showError("The seed must be a whole number, 0 or more.");
    return;
  }
  send("seed", { seed });
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

function kindOf(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  return `a ${typeof value}`;
}

async function playTimelineFile(file) {
  const limit = messageLimit();
  const tooLarge = (bytes) =>
    `${file.name} is ${kib(bytes)}, more than the ${kib(limit)} the server takes in one message, so it was not sent.`;
  if (file.size > limit) {
    ui.showError(tooLarge(file.size));
    return;
  }
  let timeline;
  try {
    timeline = JSON.parse(await file.text());
  } catch (err) {
    ui.showError(`${file.name} is not valid JSON (${err.message}); nothing was sent.`);
    return;
  }
  if (timeline === null || typeof timeline !== "object" || Array.isArray(timeline)) {
    ui.showError(`${file.name} is not a timeline: it holds ${kindOf(timeline)}, not a JSON object; nothing was sent.`);
    return;
  }
  let bytes;
  try {
    bytes = encode({ type: "timeline", id: "x".repeat(32), timeline }).byteLength;
  } catch (err) {
    ui.showError(`${file.name} cannot be sent: ${err.message}.`);
    return;
  }
  if (bytes > limit) {
    ui.showError(tooLarge(bytes));
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
    rewindRequest = { id, segment };
    ui.markRewind(segment, "sending");
  }
});

// hide the overlay once pictures arrive (and the connection is up)
els.video.addEventListener("playing", () => { if (isLive()) ui.setOverlay(null); });
window.addEventListener("pagehide", () => session?.close());

ui.setControlsEnabled(false);
showRecording();
checkPrompt();
start();
