// A page that only watches (the projector view, the viewer page): the video, and reconnecting by
// itself whenever the connection drops or the server restarts. No control channel, no controls;
// its telemetry channel reports which frames it shows, so the server knows its prompt-to-photon.
import { connect } from "./rtc.js";
import { ControlChannel } from "./control.js";
import { reportPhotons } from "./photon.js";

const RETRY_MS = [500, 1000, 2000, 4000, 5000];   // then every 5 s

export function watch(video, status) {
  let session = null;
  let attempt = 0;
  let timer = null;

  const say = (text) => { if (status) status.textContent = text; };

  function retry(why) {
    if (session) {
      session.close();
      session = null;
    }
    clearTimeout(timer);
    const wait = RETRY_MS[Math.min(attempt, RETRY_MS.length - 1)];
    attempt += 1;
    say(`${why}; reconnecting…`);
    timer = setTimeout(start, wait);
  }

  async function start() {
    say("connecting…");
    let current = null;
    try {
      current = await connect({
        control: false,
        onTrack: (stream) => {
          video.srcObject = stream;
          video.play().catch(() => {});
        },
        onState: (state) => {
          if (current !== session) return;
          if (state === "connected") {
            attempt = 0;
            say("");
          } else if (state === "failed" || state === "closed" || state === "disconnected") {
            retry("the connection was lost");
          }
        },
      });
    } catch (err) {
      retry(`cannot reach the server (${err.message})`);
      return;
    }
    session = current;
    reportPhotons(video, new ControlChannel(current.channel));
  }

  window.addEventListener("pagehide", () => session?.close());
  start();
}
