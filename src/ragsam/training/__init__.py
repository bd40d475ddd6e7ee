"""ragsam.training"""
