// One WebRTC session with the server: receive-only video plus the "control" data channel.

/**
 * The token this page presents (a server started with --token / --viewer-token asks for one):
 * `?token=` or `#token=` in the page's address, kept for the tab's life in sessionStorage and
 * taken out of the address bar, so it is not bookmarked or shown on a projector.
 */
export function pageToken() {
  const url = new URL(location.href);
  const hash = new URLSearchParams(url.hash.slice(1));
  const given = url.searchParams.get("token") ?? hash.get("token");
  if (given) {
    sessionStorage.setItem("longlive.token", given);
    url.searchParams.delete("token");
    hash.delete("token");
    url.hash = hash.toString();
    history.replaceState(null, "", url.toString());
  }
  return sessionStorage.getItem("longlive.token");
}

function authHeaders() {
  const token = pageToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Wait until ICE gathering is complete (the server takes a complete offer, no trickle). */
function gatheringComplete(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    // on a machine without usable interfaces gathering can hang; send what we have
    const timer = setTimeout(() => { pc.removeEventListener("icegatheringstatechange", done); resolve(); }, timeoutMs);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

/**
 * Connect to the server. Resolves to {pc, channel, session, close()} once the answer is set
 * (`channel` is the "telemetry" channel with `control: false`);
 * `onTrack(stream)` gets the video, `onState(state)` every connection state change.
 */
export async function connect({ onTrack, onState, base = "", control = true } = {}) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  // a viewer page (control: false) only watches: its "telemetry" channel hears the events and
  // reports what it shows (prompt-to-photon); the server steers nothing from it
  const channel = pc.createDataChannel(control ? "control" : "telemetry", { ordered: true });
  pc.addEventListener("track", (ev) => onTrack?.(ev.streams[0] ?? new MediaStream([ev.track])));
  pc.addEventListener("connectionstatechange", () => onState?.(pc.connectionState));

  await pc.setLocalDescription(await pc.createOffer());
  await gatheringComplete(pc);
  const res = await fetch(`${base}/api/offer`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    pc.close();
    throw new Error(body.error ?? body.message ?? `the server answered ${res.status}`);
  }
  await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });

  const session = body.session;
  const close = () => {
    try { pc.close(); } catch { /* already closed */ }
    // keepalive lets the request outlive the page when it is being unloaded
    fetch(`${base}/api/sessions/${encodeURIComponent(session)}`, { method: "DELETE", keepalive: true }).catch(() => {});
  };
  return { pc, channel, session, close };
}
