// Prompt-to-photon at this viewer (server/media/photon.py): after each switch the server announces
// (prompt_applied), report the frames this page puts on screen, by their RTP timestamps
// (requestVideoFrameCallback), until the server answers `photon` with the latency it
// measured from them, or a few seconds pass. The server maps the timestamps to its frames.

export const REPORT_FOR_MS = 8000;       // report this long after a switch at most
const MAX_WAITING = 256;                 // reports awaiting their answer (each gets one, in order)

/**
 * @param {HTMLVideoElement} video the element showing the stream
 * @param {import("./control.js").ControlChannel} channel the session's data channel
 * @param {(msg: object, presentedAt: number | null) => void} [onPhoton] called with each `photon`
 *   answer and when this page presented the frame it names (`shown`; performance.now() time)
 * @returns {boolean} false where the browser cannot tell which frame is on screen
 */
export function reportPhotons(video, channel, onPhoton) {
  if (typeof video.requestVideoFrameCallback !== "function") return false;
  let until = 0;
  // the reports not answered yet, oldest first (id -> when its frame was displayed): every report
  // gets one answer, in order, so a `photon` (which carries the switch's id) answers the oldest
  const waiting = new Map();
  const answered = (msg) => waiting.delete(msg.id);
  channel.on("ack", answered);
  channel.on("error", answered);
  channel.on("prompt_applied", () => { until = performance.now() + REPORT_FOR_MS; });
  channel.on("photon", (msg) => {
    until = 0;
    let presentedAt = null;
    for (const [id, at] of waiting) {
      waiting.delete(id);
      presentedAt = at;
      break;
    }
    onPhoton?.(msg, presentedAt);
  });
  const presented = (now, meta) => {
    const t = performance.now();
    if (t < until && channel.open && typeof meta.rtpTimestamp === "number") {
      // how long ago the frame was (or, negative, will be) displayed: the report's own delay
      const shownAt = meta.expectedDisplayTime ?? now;
      const age = Math.max(-1000, Math.min(60000, t - shownAt));
      try {
        waiting.set(channel.send("presented", { rtp_timestamp: meta.rtpTimestamp >>> 0, age_ms: age }), shownAt);
        while (waiting.size > MAX_WAITING) waiting.delete(waiting.keys().next().value);
      } catch { /* the channel closed under us: the next session reports */ }
    }
    if (channel.channel.readyState !== "closed") video.requestVideoFrameCallback(presented);  // (this session's only)
  };
  video.requestVideoFrameCallback(presented);
  return true;
}
