"""Applications on top of the library: the ``hf-egt`` command line, the offline demo and the built-in data sets."""
