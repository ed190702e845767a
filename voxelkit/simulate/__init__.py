"""Simulation of [11C]carfentanil studies: exact kinetics, a digital MNI phantom and a BIDS-PET study writer.

Import the submodules directly (``voxelkit.simulate.kinetics``, ``.phantom``, ``.study``); nilearn is only
imported when a phantom is built.
"""
