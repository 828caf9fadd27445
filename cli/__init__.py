"""chanscope's command line (installed as the package `chanscope.cli`). Only option parsing and printing."""
