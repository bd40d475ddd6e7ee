"""ragsam.evaluation"""
