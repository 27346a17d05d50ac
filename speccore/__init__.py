"""speccore: batch speculative decoding for any drafter x any target, with the target's exact output.

The library never imports Prefect: flows/ and tasks/ wrap it.
"""
__version__ = "0.1.0"
