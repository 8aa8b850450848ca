// Everything the page shows; app.js decides when.

const $ = (id) => document.getElementById(id);

export const els = {
  video: $("video"), overlay: $("overlay"), now: $("now"), status: $("status"), notice: $("notice"),
  form: $("prompt-form"), prompt: $("prompt"), send: $("send"), hint: $("prompt-hint"),
  pause: $("pause"), seedForm: $("seed-form"), seed: $("seed"), seedRandom: $("seed-random"),
  error: $("error"), applied: $("applied"),
  fps: $("stat-fps"), latency: $("stat-latency"), block: $("stat-block"), viewers: $("stat-viewers"),
};

const clock = (unixSeconds) =>
  new Date(unixSeconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

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
    els.notice.textContent =
      "No weights loaded: this server runs the tiny embedded default with random weights, so the pictures are " +
      "abstract. Prompts, switching and streaming behave as with the real model. " +
      "Start it with --weights DIR (or LONGLIVE_WEIGHTS) for LongLive 1.3B.";
    els.notice.hidden = false;
  } else {
    els.notice.hidden = true;
  }
}

export function showError(message) {
  els.error.textContent = message ?? "";
  els.error.hidden = !message;
  if (message) {
    clearTimeout(showError.timer);
    showError.timer = setTimeout(() => { els.error.hidden = true; }, 6000);
  }
}

export function showState(state) {
  els.now.textContent = state.prompt ?? "";
  els.now.title = state.prompt ?? "";
  if (document.activeElement !== els.seed) els.seed.value = String(state.seed ?? 0);
  els.pause.textContent = state.paused ? "Resume" : "Pause";
  els.pause.setAttribute("aria-pressed", state.paused ? "true" : "false");
  if (state.failed) setStatus("failed", "generator stopped");
  else setStatus(state.paused ? "paused" : "live");
}

export function showStats(stats) {
  els.fps.textContent = stats.fps.toFixed(1);
  els.block.textContent = `${Math.round(stats.block_ms)} ms`;
  els.viewers.textContent = String(stats.viewers);
}

export function showLatency(ms) {
  els.latency.textContent = ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

function appliedItem(p) {
  const li = document.createElement("li");
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = p.text;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `${clock(p.time)} · block ${p.block} · ${Math.round(p.latency_ms)} ms`;
  li.append(text, meta);
  li.dataset.block = String(p.block);
  return li;
}

/** Replace the list with the server's history (oldest first in `prompts`). */
export function showHistory(prompts) {
  els.applied.replaceChildren(...prompts.slice().reverse().map(appliedItem));
}

export function addApplied(p) {
  els.applied.querySelector("li.pending")?.remove();
  els.applied.prepend(appliedItem(p));
  while (els.applied.children.length > 50) els.applied.lastElementChild.remove();
}

export function showPending(text) {
  els.applied.querySelector("li.pending")?.remove();
  const li = document.createElement("li");
  li.className = "pending";
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = "queued for the next block…";
  li.append(span, meta);
  els.applied.prepend(li);
}
