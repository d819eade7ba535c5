"""What survives a crash: the pool log (accepted, not yet aggregated updates) and checkpoints.

Pure file I/O on numpy arrays; callers run it off the event loop (the engine thread).
"""
