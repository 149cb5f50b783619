"""Sub-commands of the ``sidrepro`` command line, one module per group."""
