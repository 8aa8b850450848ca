"""A WHEP player made of GStreamer's webrtcbin: one POST of a receive-only VP8 offer, then count
the frames it decodes. Run with the system Python (python3-gi): `python3 whep_webrtcbin.py
URL SECONDS`. Prints one JSON line: {"status", "frames", "width", "height", "error"}.

Debian 12 has no whepsrc (that is gst-plugins-rs); a WHEP client is webrtcbin plus one HTTP
POST, which is all this is."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

CAPS = "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"


def main() -> int:
    url, seconds = sys.argv[1], float(sys.argv[2])
    Gst.init(None)
    result = {"status": None, "frames": 0, "width": None, "height": None, "error": None, "location": None}
    loop = GLib.MainLoop()
    pipe = Gst.Pipeline.new("player")
    webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
    webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
    pipe.add(webrtc)

    def on_frame(sink, buffer, pad):
        result["frames"] += 1
        if result["width"] is None:
            s = pad.get_current_caps().get_structure(0)
            result["width"], result["height"] = s.get_value("width"), s.get_value("height")

    def on_pad(element, pad):
        if pad.direction != Gst.PadDirection.SRC:
            return
        chain = Gst.parse_bin_from_description("rtpvp8depay ! vp8dec ! videoconvert ! fakesink name=sink "
                                               "signal-handoffs=true sync=false", True)
        pipe.add(chain)
        chain.sync_state_with_parent()
        chain.get_by_name("sink").connect("handoff", on_frame)
        pad.link(chain.get_static_pad("sink"))

    def post_offer():
        offer = webrtc.get_property("local-description").sdp.as_text()
        request = urllib.request.Request(url, data=offer.encode(), method="POST",
                                         headers={"Content-Type": "application/sdp"})
        try:
            with urllib.request.urlopen(request, timeout=20) as r:
                result["status"], answer = r.status, r.read().decode()
                result["location"] = r.headers.get("Location")
        except urllib.error.HTTPError as e:
            result["status"], result["error"] = e.code, e.read().decode().strip()
            loop.quit()
            return False
        _, sdp = GstSdp.SDPMessage.new_from_text(answer)
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        webrtc.emit("set-remote-description", desc, Gst.Promise.new())
        return False

    waited = [0]

    def when_gathered():
        """POST once the offer has its UDP host candidate. (Gathering never reports complete
        here: libnice's UPnP discovery has nowhere to go inside the namespace.)"""
        waited[0] += 1
        desc = webrtc.get_property("local-description")
        text = desc.sdp.as_text() if desc is not None else ""
        if any(" UDP " in line for line in text.splitlines() if line.startswith("a=candidate")) and waited[0] >= 5:
            post_offer()
            return False
        return waited[0] < 100

    def on_message(bus, message):
        if message.type == Gst.MessageType.ERROR:
            err, _ = message.parse_error()
            result["error"] = err.message
            loop.quit()

    webrtc.connect("pad-added", on_pad)
    bus = pipe.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    pipe.set_state(Gst.State.PLAYING)
    webrtc.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, Gst.Caps.from_string(CAPS))
    promise = Gst.Promise.new()
    webrtc.emit("create-offer", None, promise)
    promise.wait()
    reply = promise.get_reply()          # kept alive: the offer below points into it
    offer = reply.get_value("offer")
    if offer is None:
        result["error"] = "webrtcbin made no offer"
        print(json.dumps(result), flush=True)
        return 1
    webrtc.emit("set-local-description", offer, Gst.Promise.new())
    GLib.timeout_add(100, when_gathered)
    GLib.timeout_add(int(seconds * 1000), loop.quit)
    loop.run()
    pipe.set_state(Gst.State.NULL)
    if result["location"]:
        base = url.split("/whep")[0]
        try:
            urllib.request.urlopen(urllib.request.Request(base + result["location"], method="DELETE"), timeout=10)
        except urllib.error.URLError as e:
            result["error"] = result["error"] or f"DELETE failed: {e}"
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
