// Prompt-to-photon at this viewer (server/photon.py): after each switch the server announces
// (prompt_applied), report the frames this page puts on screen, by their RTP timestamps
// (requestVideoFrameCallback), until the server answers `photon` with the latency it
// measured from them, or a few seconds pass. The server maps the timestamps to its frames.

export const REPORT_FOR_MS = 8000;       // report this long after a switch at most

/**
 * @param {HTMLVideoElement} video the element showing the stream
 * @param {import("./control.js").ControlChannel} channel the session's data channel
 * @param {(msg: object) => void} [onPhoton] called with each `photon` answer
 * @returns {boolean} false where the browser cannot tell which frame is on screen
 */
export function reportPhotons(video, channel, onPhoton) {
  if (typeof video.requestVideoFrameCallback !== "function") return false;
  let until = 0;
  channel.on("prompt_applied", () => { until = performance.now() + REPORT_FOR_MS; });
  channel.on("photon", (msg) => {
    until = 0;
    onPhoton?.(msg);
  });
  const presented = (now, meta) => {
    const t = performance.now();
    if (t < until && channel.open && typeof meta.rtpTimestamp === "number") {
      // how long ago the frame was (or, negative, will be) displayed: the report's own delay
      const age = Math.max(-1000, Math.min(60000, t - (meta.expectedDisplayTime ?? now)));
      try {
        channel.send("presented", { rtp_timestamp: meta.rtpTimestamp >>> 0, age_ms: age });
      } catch { /* the channel closed under us: the next session reports */ }
    }
    if (channel.channel.readyState !== "closed") video.requestVideoFrameCallback(presented);  // (this session's only)
  };
  video.requestVideoFrameCallback(presented);
  return true;
}
