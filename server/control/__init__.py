"""Control paths: the hub every control client talks to (the data channel, the WebSocket) and
OSC, a control path of its own over UDP. All of them parse with `server.protocol` and steer the
engine through the hub."""
