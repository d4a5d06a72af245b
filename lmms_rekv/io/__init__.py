"""At the ground: video decoding and writing (PyAV), frame preprocessing and chat-template
rendering."""
