"""Photos, videos and datasets in, emotion labels out: face detection, the served pyfunc model, scoring."""
