// The beat, between the server's states: the state's tempo says where the beat was when it was
// sent; the page counts on from there with its own clock (and is put right by the next state).

export class BeatClock {
  constructor() {
    this.bpm = 120;
    this.beatsPerBar = 4;
    this.beat = 0;          // the beat at `at`
    this.at = 0;            // the page's clock (ms, performance.now()) when the state said so
    this.known = false;
  }

  /** The state's `tempo` map, heard at `atMs`. */
  update(tempo, atMs = performance.now()) {
    if (!tempo || !(tempo.bpm > 0)) return;
    this.bpm = tempo.bpm;
    this.beatsPerBar = tempo.beats_per_bar || 4;
    this.beat = Number(tempo.beat) || 0;
    this.at = atMs;
    this.known = true;
  }

  beatAt(ms = performance.now()) {
    return this.beat + ((ms - this.at) * this.bpm) / 60000;
  }

  /** 0-based position in the bar of the beat at `ms` (0: the downbeat). */
  barBeatAt(ms = performance.now()) {
    const n = this.beatsPerBar;
    return ((Math.floor(this.beatAt(ms) + 1e-6) % n) + n) % n;
  }

  /** Milliseconds from `ms` to the next beat. */
  untilNextBeat(ms = performance.now()) {
    const b = this.beatAt(ms);
    let next = Math.ceil(b + 1e-6) - b;
    if (next <= 0) next += 1;
    return (next * 60000) / this.bpm;
  }
}
