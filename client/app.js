// The page: connect, show the stream, send what the performer types, show what comes back.
import { connect } from "./rtc.js";
import { ControlChannel, PROTOCOL_VERSION } from "./control.js";
import * as ui from "./ui.js";

const { els } = ui;
const DEFAULT_PROMPT_CHARS = 2000;   // until the server's hello says (state.limits.prompt_chars)

let session = null;     // {pc, channel, session, close}
let control = null;     // ControlChannel, while its data channel is open
let state = {};         // the server's state, as last heard
let retryTimer = null;
let captionTimer = null;

const promptLimit = () => state.limits?.prompt_chars ?? DEFAULT_PROMPT_CHARS;
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
  els.send.disabled = false;
  ui.showState(state);
  if (els.video.readyState >= 2 && !els.video.paused) ui.setOverlay(null);
}

/** The picture is no longer live: say so at once, over the frozen frame. */
function lost(why, { retry = true } = {}) {
  ui.setStatus("disconnected", "disconnected");
  ui.setOverlay(`${why} — ${retry ? "reconnecting" : "waiting for it"}…`);
  els.send.disabled = true;
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
    ui.showNotice(state);
    ui.showState(state, isLive());
    ui.showHistory(state.prompts ?? []);
    if (state.stats) ui.showStats(state.stats, state.fps);
    checkPrompt();
  });
  c.on("state", (msg) => {
    state = { ...state, ...msg.state };
    ui.showState(state, isLive());
  });
  c.on("stats", (msg) => {
    state.stats = msg;
    ui.showStats(msg, state.fps);
  });
  c.on("ack", (msg) => ui.markQueued(msg.id));
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
    ui.showError(msg.message);
  });
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
  const id = send("prompt", { text });
  if (id) {
    ui.showPending(id, text);
    els.prompt.select();
  }
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

// hide the overlay once pictures arrive (and the connection is up)
els.video.addEventListener("playing", () => { if (isLive()) ui.setOverlay(null); });
window.addEventListener("pagehide", () => session?.close());

els.send.disabled = true;
checkPrompt();
start();
