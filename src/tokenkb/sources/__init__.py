"""Readers of outside sources: awesome lists, citation lists, BibTeX and the arXiv API.

Importers turn text into `Entry` candidates and report what they could not read; they never
write files. `arxiv` is the only module that touches the network.
"""
