// The page: connect, show the stream, send what the performer types, show what comes back.
import { connect } from "./rtc.js";
import { ControlChannel, PROTOCOL_VERSION } from "./control.js";
import * as ui from "./ui.js";

const { els } = ui;
let session = null;     // {pc, channel, session, close}
let control = null;     // ControlChannel
let state = {};         // the server's state, as last heard
let retryTimer = null;
let captionTimer = null;

async function start() {
  clearTimeout(retryTimer);
  ui.setStatus("connecting");
  ui.setOverlay("Connecting…");
  try {
    session = await connect({
      onTrack: (stream) => {
        els.video.srcObject = stream;
        els.video.play().catch(() => {});
      },
      onState: (s) => {
        if (s === "failed" || s === "disconnected" || s === "closed") {
          ui.setStatus("disconnected");
          ui.setOverlay("Disconnected — reconnecting…");
          if (s !== "disconnected") scheduleRetry();
        } else if (s === "connected") {
          ui.setStatus(state.paused ? "paused" : "live");
        }
      },
    });
  } catch (err) {
    ui.showError(`Cannot connect: ${err.message}`);
    ui.setStatus("disconnected");
    ui.setOverlay("Cannot reach the server — retrying…");
    scheduleRetry();
    return;
  }
  control = new ControlChannel(session.channel);
  wireControl(control);
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
    ui.showState(state);
    ui.showHistory(state.prompts ?? []);
    if (state.stats) ui.showStats(state.stats);
    els.send.disabled = false;
  });
  c.on("state", (msg) => {
    state = { ...state, ...msg.state };
    ui.showState(state);
  });
  c.on("stats", (msg) => ui.showStats(msg));
  c.on("prompt_applied", (msg) => {
    state.prompt = msg.text;
    ui.addApplied(msg);
    ui.showLatency(msg.latency_ms + msg.plays_in_ms);
    // the caption follows the picture: the new block goes on air after the frames before it
    clearTimeout(captionTimer);
    captionTimer = setTimeout(() => ui.showState(state), msg.plays_in_ms);
  });
  c.on("error", (msg) => ui.showError(msg.message));
}

function send(type, fields) {
  if (!control) {
    ui.showError("Not connected yet.");
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
els.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = els.prompt.value.trim();
  if (!text) return;
  if (send("prompt", { text })) {
    ui.showPending(text);
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

// hide the overlay once pictures arrive
els.video.addEventListener("playing", () => ui.setOverlay(null));
window.addEventListener("pagehide", () => session?.close());

els.send.disabled = true;
start();
