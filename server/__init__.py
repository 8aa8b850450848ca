"""The live server (asyncio): HTTP, WebRTC, the control protocol and the engine thread.

One module per idea: `serve` (`longlive serve`: load, start, serve until stopped), `engine`
(the supervised worker thread that owns the pipeline), `prompt_encoder` (new prompts encoded
off the generation thread), `framebus` (newest frames + the playback clock), `track` (one
viewer's video track), `protocol` (the control messages), `control` (control clients,
events, stats), `webrtc` (peer connections, where ICE gathers), `app` (routes). See
docs/PROTOCOL.md.
"""
