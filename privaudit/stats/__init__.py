"""Numbers with no model in them: membership metrics with intervals and calibration splits
(``metrics``), nearest-member search (``search``). Imports: io.
"""
