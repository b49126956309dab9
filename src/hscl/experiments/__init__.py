"""The papers' artefacts, one module each, composed from the library and the engine.

``table1`` (H-SCL Table I and Fig. 1), ``figures`` (Fig. 4 / Fig. 5 and the collapse runs), ``table2``
(the graph experiments), ``schane`` (SCHaNe fine-tuning); ``presets`` finds the YAML presets shipped in
``configs/`` as package data.
"""
