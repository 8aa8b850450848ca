"""The door: which requests the server takes at all (Host, Origin, content type: `checks`), how
often (`limits`), and who may steer (`roles`)."""
