"""Pure geometry of feature clouds at three scales: galaxy, lobes, crystals.

Functions take arrays and return arrays or small frozen dataclasses: no paths, no connections.
"""
