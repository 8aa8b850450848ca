"""The asyncio world: HTTP, WebRTC, the control protocol, sessions and the `longlive` CLI.

One module per idea: `engine` (the worker thread that owns the pipeline), `framebus`
(newest frames + the playback clock), `track` (one viewer's video track), `protocol` (the
control messages), `control` (control clients, events, stats), `webrtc` (peer
connections), `app` (routes), `cli` (the command line). See docs/PROTOCOL.md.
"""
