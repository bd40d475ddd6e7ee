"""ragsam.retrieval"""
