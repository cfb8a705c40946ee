"""The bottom layer: what goes in and out of privaudit, and the verdict rules (step 4 of the flow).

Errors and exit codes (``errors``), atomic writes (``files``), what privaudit may delete
(``ownership``), the results schema (``results``) and its verdict rules (``verdict``), exports
(``exports``), images as data URIs (``images``). Imports nothing else of privaudit; the report
renderer reads only this layer.
"""
