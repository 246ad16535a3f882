"""mvr.server: the retrieval engine and its gRPC front end.

Data flows one way: service → collection → (encoder → fde → index/store) → rerank.
gRPC types stop at :mod:`mvr.server.service`; everything below works on numpy arrays and dataclasses.
"""
