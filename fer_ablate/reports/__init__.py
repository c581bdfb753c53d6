"""Reports built from tracked runs only (never from numbers typed by hand); no TensorFlow here."""
