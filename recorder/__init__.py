"""Robot-side recorder: capture cameras at a fixed rate, store raw frames, enqueue encodes."""
