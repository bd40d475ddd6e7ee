"""ragsam.inference"""
