"""Search that reads more than the vectors: graph-kNN over a taxonomy (:mod:`lorentz_rag.search.graph_knn`) and
the one dispatch of exact ``broader`` / ``narrower`` search over a model's channels and taxonomy
(:mod:`lorentz_rag.search.relation`), shared by ``model.search``, the FAISS folder, the vector stores and
``eval beir``."""
