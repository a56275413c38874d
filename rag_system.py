"""The retrieval engine (issue: the memory brain): a per-user index of memory embeddings with explainable scoring.

Not built yet. It will hold pure functions and numpy over the embeddings that ``infrastructure.storage`` returns,
and import nothing above ``infrastructure``.
"""
