"""Step 2 of the flow, data: image sets (``sets``), prompt files (``prompts``) and the checks run on
them before any attack (``checks``). Imports: stats, io.
"""
