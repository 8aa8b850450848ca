"""The offline side: commands that make video files without the live server, and what they share with it.

`generate` (a prompt to a file) lives here now; `render` (a timeline to a file),
`interactive` (chunk by chunk at the terminal) and `plan` come next. Their shared pieces
live here too and the live server uses them: `videofile` (writing H.264 files) now,
timelines and the prompt enhancer next. No event loop runs here, and nothing here imports
the server (`server/` sits above this room, `streaming/` below it).
"""
