// The ring tone, from the Web Audio API (no sound file to ship): two short beeps every 2 s.
// When to ring is the SDK's business (callInvite, callRingStopped); this is only the sound.
export class Ringtone {
  constructor() {
    this.context = null;
    this.timer = null;
  }

  // Must run inside a click: browsers start audio only after a user gesture.
  unlock() {
    if (!this.context && window.AudioContext) this.context = new AudioContext();
  }

  start() {
    if (this.timer || !this.context) return;
    const ring = () => {
      for (const offset of [0, 0.4]) this.beep(this.context.currentTime + offset);
    };
    ring();
    this.timer = setInterval(ring, 2000);
  }

  beep(at) {
    const tone = this.context.createOscillator();
    const gain = this.context.createGain();
    tone.frequency.value = 440;
    gain.gain.value = 0.1;
    tone.connect(gain).connect(this.context.destination);
    tone.start(at);
    tone.stop(at + 0.3);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }
}
