"""Performing: the cue bank (named prompts fired by key, MIDI or OSC) and the tempo clock that
quantises them to the beat."""
