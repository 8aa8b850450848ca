"""Media: how frames leave the server (WebRTC sessions and their tracks, the one shared encoder,
WHEP, WHIP, the GStreamer sink) and how long they take to reach a screen (photon timing)."""
