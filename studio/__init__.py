"""The offline side: commands that make video files without the live server, and what they share with it.

The commands: `generate` (a prompt to a file), `render` (a timeline or a recording's sidecar
to a file, exactly), `interactive` (chunk by chunk at the terminal, with AI prompt
enhancement) and `plan` (a story to a timeline). The pieces they share with the live server
live here too: `timeline` (one timeline model: Scope v2.0 timelines and Scope workflows in,
v2.0 out), `lineage` and `sidecar` (how a stream came to be, and its record), `videofile`
(H.264 files, crash-safe fragmented MP4) and `enhancer` (the AI prompt rewriter). No event
loop runs here, and nothing here imports the server (`server/` sits above this room,
`streaming/` below it).
"""
