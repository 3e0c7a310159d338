"""The development harness: hand-placed test rows, the local SMTP sink and the
live services the trigger benchmark and the demo run. Not part of the product:
the product packages never import it.
"""
