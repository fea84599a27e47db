"""Pure neural-network modules with the official state-dict layouts (no I/O, no tasks).

Import the submodules directly (`metis_cli.nn.acoustic_codec`, ...); this package imports
nothing heavy.
"""
