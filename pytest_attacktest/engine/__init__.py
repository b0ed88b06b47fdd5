"""The binarization test's engine: usable without pytest.

The modules here know nothing of pytest or the plugin (a test checks it):
:mod:`.binarization` runs the test (sampling, features, readout, routing,
verification); :mod:`.claims` measures a claim's robust accuracy;
:mod:`.options` validates the engine's settings; :mod:`.errors` holds the
errors that tell a user what to change. The pytest side (``plugin``,
``fixture``, ``reporting``, ...) lives one level up and imports from here.
"""
