"""The live server (asyncio): HTTP, WebRTC, the control protocol and the engine thread.

At the top, the core: `serve` (`longlive serve`: load, start, serve until stopped), `app`
(builds the pieces and lists the routes), `api` and `pages` (the routes' handlers: the HTTP
API, the client's files), `appkeys` (what the app holds), `engine` (the supervised worker thread that owns the pipeline),
`prompt_encoder` (new prompts encoded off the generation thread), `framebus` (newest frames +
the playback clock), `block_sink` (what takes every generated block), `protocol` (the control
messages), `addresses` (the machine's addresses, where ICE gathers), `metrics` (Prometheus),
`enhance` (the AI prompt rewrite on the event loop). Below it, a folder per concern:

- `control/`: the hub every control client talks to (data channel, WebSocket) and OSC;
- `media/`: frames out: WebRTC sessions and tracks, the shared encoder, WHEP, WHIP, the
  GStreamer sink, prompt-to-photon timing;
- `performing/`: cues and tempo;
- `keeping/`: the recorder and the rewind shelf;
- `door/`: request checks (Host, Origin, content type), rate limits, roles.

Nothing imports upward: the concerns import the core's foundation (protocol, frame bus, block
sink, addresses) and the concerns listed as theirs in tests/test_layering.py; only `app` and
`serve` put everything together. See docs/PROTOCOL.md.
"""
