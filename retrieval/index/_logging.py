"""Imported first by `retrieval.index`: faiss logs which CPU build it loads at INFO, noise for CLI users."""

import logging

logging.getLogger("faiss.loader").setLevel(logging.WARNING)
