"""Training both models on a fab's own labelled folder into a new model-repository version (``edge-inspect train``)."""
