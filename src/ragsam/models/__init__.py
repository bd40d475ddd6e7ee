"""ragsam.models"""
