"""ragsam.data"""
