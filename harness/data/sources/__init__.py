"""The built-in dataset sources, one module per source: the dataset registry imports every module
in this folder (``DATASETS``'s built-in package), so a new source is one new file here."""
